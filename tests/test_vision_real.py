"""The real tier of ``vision-digits`` on local fixtures: a tiny ViT built from a config and a PIL image folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures import VISION_CLASSES, VISION_MODEL_LABELS, make_class_folder, save_vit

from bench.cache import Cache
from bench.core.spec import make_spec
from bench.errors import DataError
from bench.run.devices import resolve_device
from bench.run.runner import run
from bench.run.stages import Session
from tasks.vision.common import SPLITS
from tasks.vision.task import VisionConfig

CLASSES, MODEL_LABELS = VISION_CLASSES, VISION_MODEL_LABELS
PER_CLASS = 20
FAST = {"release_steps": 30, "budget": 10, "eval_every": 5, "curvature_iters": 0, "bootstrap": 50}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-real")
    return save_vit(root / "vit"), make_class_folder(root / "shapes")


def build(model, dataset, tmp_path, **options):
    from tasks.vision.real import build_real

    cfg = VisionConfig(dataset=str(dataset), **{"release_steps": 30, **options})
    return build_real(cfg, str(model), Cache(tmp_path / "cache"), resolve_device(None, "real"))


def test_end_to_end_specdef_run(fixtures, tmp_path):
    model, folder = fixtures
    spec = make_spec(task="vision-digits", defense="specdef", attack="full-ft", tier="real", model=str(model),
                     task_args={"dataset": str(folder), **FAST}, attack_args={"lr": 1e-3})
    result = run(spec, Session(results_dir=tmp_path / "res", cache=Cache(tmp_path / "cache")))
    assert result.status == "success", result.error
    assert result.metrics is not None and result.summary.steps_run >= 1
    info = json.loads((tmp_path / "res" / spec.run_id / "run.json").read_text())
    provenance = info["task_provenance"]
    assert provenance["model_weights_sha256"] and provenance["dataset_sha256"]
    assert provenance["forbidden_classes"] == ["red", "yellow"] and provenance["label_mapping"] == "names"
    df = pq.read_table(tmp_path / "res" / spec.run_id / "metrics.parquet").to_pandas()
    assert {"released", "defended", "attack", "post_attack", "summary"} <= set(df["phase"])
    defended = df[df["phase"] == "defended"].set_index("metric")["value"]
    assert defended["layers_touched"] > 0
    assert defended["max_abs_diff"] < 1e-3, "SpecDef must preserve the ViT's logits"
    released_harm = df[(df["phase"] == "released") & (df["metric"] == "harm")]["value"].iloc[0]
    assert released_harm < 0.8  # fine-tuned on allowed classes only: forbidden outputs are not yet learned


def test_splits_are_disjoint_and_follow_the_classes(fixtures, tmp_path):
    from tasks.vision.real import split_indices

    model, folder = fixtures
    task = build(model, folder, tmp_path, forbidden_classes=("green", "3"), max_per_class=15)
    prov = task.provenance()
    assert prov["class_names"] == list(CLASSES)
    assert prov["forbidden_classes"] == ["green", "yellow"] and prov["allowed_classes"] == ["blue", "red"]
    ids = prov["model_targets"]
    assert ids == {name: MODEL_LABELS.index(name) for name in CLASSES}
    forbidden_ids, allowed_ids = {ids["green"], ids["yellow"]}, {ids["blue"], ids["red"]}
    for name in SPLITS:
        wanted = forbidden_ids if name in ("attack", "defender_harmful", "eval_harmful") else allowed_ids
        assert set(task.splits[name].y.tolist()) == wanted, name
    assert sum(prov["split_sizes"].values()) == 4 * 15
    rows = torch.cat([task.splits[name].x.flatten(1) for name in SPLITS])
    assert len(torch.unique(rows, dim=0)) == len(rows), "an image appears in two splits"
    labels = np.repeat(np.arange(4), PER_CLASS)
    indices = split_indices(labels, [2, 3], max_per_class=0)
    assert sorted(np.concatenate(list(indices.values())).tolist()) == list(range(len(labels)))
    again = split_indices(labels, [2, 3], max_per_class=0)  # fixed seed: independent of the run seed
    assert all(np.array_equal(indices[k], again[k]) for k in SPLITS)


def test_real_tier_defender_view(fixtures, tmp_path):
    from bench import testing

    model, folder = fixtures
    task = build(model, folder, tmp_path)
    view = task.defender_view()
    assert view.feature_modules and all(".layer" in name for name in view.feature_modules)  # the ViT's blocks
    testing.check_defender_view("vision-digits (real)", task)
    features = view.features(task.model, view.harmful[0])
    assert all(rows.shape[0] == len(view.harmful[0][1]) for rows in features.values())  # the class token per image


def test_released_model_is_cached_and_round_trips(fixtures, tmp_path):
    model, folder = fixtures
    first = build(model, folder, tmp_path)
    second = build(model, folder, tmp_path)
    directory = Path(first.provenance()["released_model"])
    assert (directory / "manifest.json").is_file() and directory == Path(second.provenance()["released_model"])
    x = first.splits["eval_benign"].x
    with torch.no_grad():
        torch.testing.assert_close(first.forward(first.model, x), second.forward(second.model, x), rtol=0, atol=0)
    assert first.architecture()["class"] == "ViTForImageClassification"
    from bench.run.curvature import top_hessian_eigenvalue  # double backward must work on the reloaded model

    batch = first.curvature_batch()
    eigen = top_hessian_eigenvalue(first.model, lambda m: first.harmful_loss(m, batch), iters=2)
    assert eigen.iterations == 2 and np.isfinite(eigen.value)
    as_is = build(model, folder, tmp_path, release_steps=0)
    from transformers import ViTForImageClassification

    original = ViTForImageClassification.from_pretrained(model).eval().to(x.device)
    with torch.no_grad():
        torch.testing.assert_close(as_is.forward(as_is.model, x), original(pixel_values=x).logits)
    assert as_is.provenance()["released_model"] == "checkpoint"


def test_integer_fallback_and_missing_processor(fixtures, tmp_path):
    _, folder = fixtures
    model = save_vit(tmp_path / "vit6", labels=tuple(f"LABEL_{i}" for i in range(6)), processor=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = build(model, folder, tmp_path, release_steps=0)
    messages = " ".join(str(w.message) for w in caught)
    assert "ViTImageProcessor" in messages and "output unit i" in messages
    assert task.provenance()["label_mapping"] == "indices"
    assert task.provenance()["model_targets"] == {name: i for i, name in enumerate(CLASSES)}
    small = save_vit(tmp_path / "vit2", labels=("a", "b"))
    with pytest.raises(DataError, match="2 output labels but the dataset has 4 classes"):
        build(small, folder, tmp_path)


def test_train_test_layout_grayscale_and_default_split(fixtures, tmp_path):
    from PIL import Image

    model, _ = fixtures
    rng = np.random.default_rng(1)
    for split, count in (("train", 8), ("test", 4)):
        for name in ("a", "b", "c"):
            (tmp_path / "tt" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(12, 12), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "tt" / split / name / f"{i}.jpg")  # mode "L"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # class names a, b, c are not the model's labels
        task = build(model, tmp_path / "tt", tmp_path, release_steps=0)
    prov = task.provenance()
    assert prov["class_names"] == ["a", "b", "c"] and prov["forbidden_classes"] == ["c"]  # the larger half allowed
    assert sum(prov["split_sizes"].values()) == 3 * 12  # train and test are pooled, then re-split
    assert task.splits["eval_benign"].x.shape[1:] == (3, 16, 16)


def test_clear_errors(fixtures, tmp_path):
    model, folder = fixtures
    with pytest.raises(DataError, match="model path .*no-such-model.* does not exist"):
        build(tmp_path / "no-such-model", folder, tmp_path)
    with pytest.raises(DataError, match="dataset folder .*no-such-data.* does not exist"):
        build(model, tmp_path / "no-such-data", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        build(model, tmp_path / "empty", tmp_path)
    with pytest.raises(DataError, match="unknown forbidden class 'purple'; available classes: blue, green, red, yellow"):
        build(model, folder, tmp_path, forbidden_classes=("purple",))
    with pytest.raises(DataError, match="no column 'img'"):
        build(model, folder, tmp_path, image_column="img")
    with pytest.raises(DataError, match="at least one class must stay allowed"):
        build(model, folder, tmp_path, forbidden_classes=CLASSES)
    corrupt = make_class_folder(tmp_path / "corrupt", per_class=6)
    (corrupt / "red" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        build(model, corrupt, tmp_path)


def test_failed_real_run_records_the_data_error(tmp_path, fixtures):
    model, _ = fixtures
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", tier="real", model=str(model),
                     task_args={"dataset": str(tmp_path / "missing"), **FAST}, attack_args={"lr": 1e-3})
    result = run(spec, Session(results_dir=tmp_path / "res", cache=Cache(tmp_path / "cache")))
    assert result.status == "failed" and result.error.startswith("DataError: dataset folder")


def test_classifier_plugins_on_the_vit(fixtures, tmp_path):
    """condnum conditions the last block's class token; the head attacks find the ViT's head by structure."""
    import copy

    from attacks._head import find_head
    from bench.registry import ATTACKS, DEFENSES
    from bench.testing import RecordingMonitor

    model, folder = fixtures
    task = build(model, folder, tmp_path)
    assert find_head(task.model, task, "linear-probe", torch.Generator().manual_seed(0)) == "classifier"
    condnum = DEFENSES.get("condnum")
    result = condnum().apply(copy.deepcopy(task.model), task.defender_view(), condnum.Config(steps=2),
                             generator=torch.Generator().manual_seed(0))
    assert result.info["feature_module"] == task.feature_modules[-1] and len(result.curve) == 2
    for name in ("linear-probe", "head-reinit"):
        cls = ATTACKS.get(name)
        monitor = RecordingMonitor(budget=2, stop_at=2)
        report = cls().run(copy.deepcopy(result.model), task, cls.Config(budget=2, batch_size=4, eval_every=1),
                           generator=torch.Generator().manual_seed(0), monitor=monitor)
        assert report.info["head"] == "classifier" and len(monitor.calls) == 3  # begin, then 2 steps
