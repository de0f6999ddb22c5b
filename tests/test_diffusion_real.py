"""The real tier of ``sd-style`` / ``sd-concept`` on local fixtures: a tiny StableDiffusionPipeline built from
configs and saved to disk, and a captioned, labelled image folder (the ``datasets`` imagefolder layout)."""

from __future__ import annotations

import pytest
import torch
from fixtures import SD_CONTENTS, SD_STYLES, make_captioned_folder, save_sd_pipeline

from bench.cache import Cache
from bench.core.spec import make_spec
from bench.errors import ConfigError, DataError
from bench.run.devices import resolve_device
from bench.run.runner import run
from bench.run.stages import Session
from tasks.diffusion import shapes
from tasks.diffusion.task import DiffusionConfig

CONTENTS, STYLES = SD_CONTENTS, SD_STYLES
FAST = {"judge_steps": 40, "eval_samples": 4, "probe_samples": 2, "confirm_samples": 4, "sampler_steps": 2,
        "curvature_iters": 0, "bootstrap": 0}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-real")
    return save_sd_pipeline(root), make_captioned_folder(root / "images")


def build(task, model, folder, tmp_path, device=None, **options):
    from bench.registry import TASKS

    cfg = DiffusionConfig(dataset=str(folder), **{**FAST, "forbidden": "stripes", **options})
    return TASKS.get(task)().build(cfg, tier="real", model=str(model), cache=Cache(tmp_path / "cache"),
                                  device=device or resolve_device(None, "real"))


def test_real_tier_loads_a_saved_pipeline_and_image_folder(fixtures, tmp_path):
    model, folder = fixtures
    task = build("sd-style", model, folder, tmp_path)
    prov = task.provenance()
    assert prov["forbidden"] == "stripes" and prov["styles"] == ["flat", "stripes"] and prov["resolution"] == 16
    assert sum(prov["split_sizes"].values()) == 4 * 8
    harmful = task.data.images["attack"].text.tolist() + task.data.images["probe_harmful"].text.tolist()
    assert all("stripes" in task.data.captions[i] for i in harmful)
    assert not any("stripes" in task.data.captions[i] for i in task.data.images["replay"].text.tolist())
    assert task.data.images["attack"].latents.shape[1:] == (4, 8, 8)
    probe = task.probe(task.model)
    assert 0 <= probe.harm <= 1 and probe.extras["proxy_benign_ratio"] == pytest.approx(1.0)
    assert task.evaluate(task.model).harm.n == FAST["eval_samples"]
    concept = build("sd-concept", model, folder, tmp_path, forbidden="square")
    assert all("square" in concept.data.captions[int(i)] for i in concept.data.prompts["harmful"].text)


def test_real_tier_defender_view(fixtures, tmp_path):
    model, folder = fixtures
    task = build("sd-style", model, folder, tmp_path, device=torch.device("cpu"))
    view = task.defender_view()
    harmful, aligned = view.harmful[0], view.aligned[0]  # the released UNet's generations, through the VAE
    assert aligned.latents.shape == harmful.latents.shape and torch.equal(aligned.text, harmful.text)
    assert torch.equal(aligned.noise, harmful.noise) and not torch.equal(aligned.latents, harmful.latents)
    pair = next(view.stream("pairs", 2, torch.Generator().manual_seed(0)))
    assert torch.equal(pair[0].timesteps, pair[1].timesteps) and torch.equal(pair[0].text, pair[1].text)
    features = view.features(task.model, harmful)
    assert list(features) == ["mid_block", *(f"up_blocks.{i}" for i in range(len(task.model.up_blocks)))]
    assert all(f.shape[0] == len(harmful.text) for f in features.values())
    pred = view.predictions(task.model, harmful)
    with torch.no_grad():
        torch.testing.assert_close((pred.outputs - pred.targets).pow(2).mean(-1).detach(),
                                   view.harmful_loss(task.model, harmful, reduction="none"))
    assert view.attacker.steps == 64 and view.attacker.lrs == (1e-6, 1e-5)


# bfloat16: what benchmarks/gpu_check.py runs on a GPU (its CPU smoke mode is in the slow lane), end to end here.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_end_to_end_specdef_run_on_the_real_tier(fixtures, tmp_path, dtype):
    model, folder = fixtures
    spec = make_spec(task="sd-style", defense="specdef", attack="full-ft", tier="real", model=str(model),
                     task_args={"dataset": str(folder), "forbidden": "stripes", "dtype": dtype, **FAST},
                     attack_args={"lr": 1e-4, "budget": 2, "eval_every": 2, "batch_size": 4})
    session = Session(results_dir=tmp_path / "res", cache=Cache(tmp_path / "cache"))
    result = run(spec, session)
    assert result.status == "success", result.error
    assert session.released(spec).task.model.dtype == getattr(torch, dtype)
    import pyarrow.parquet as pq

    df = pq.read_table(tmp_path / "res" / spec.run_id / "metrics.parquet").to_pandas()
    defended = df[df["phase"] == "defended"].set_index("metric")["value"]
    assert defended["layers_touched"] > 0 and defended["max_abs_diff"] < (1e-3 if dtype == "float32" else 0.05)


def test_clip_judges(fixtures, tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    model, folder = fixtures
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 400, "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16),
                  tokenizer=tokenizer).save_pretrained(tmp_path / "clip")
    task = build("sd-style", model, folder, tmp_path, clip_model=str(tmp_path / "clip"))
    images = torch.from_numpy(shapes.generate(shapes.pairs(CONTENTS, STYLES), 4, seed=1).pixels)
    assert set(task.style_judge.predict(images).tolist()) <= {0, 1} and task.provenance()["judges"].startswith("clip")


def test_clear_errors(fixtures, tmp_path):
    model, folder = fixtures
    with pytest.raises(DataError, match="dataset folder .*no-such-folder.* does not exist"):
        build("sd-style", model, tmp_path / "no-such-folder", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        build("sd-style", model, tmp_path / "empty", tmp_path)
    with pytest.raises(DataError, match="model path .*no-such-model.* does not exist"):
        build("sd-style", tmp_path / "no-such-model", folder, tmp_path)
    with pytest.raises(DataError, match="forbidden='zigzag' is not a style label .* available: flat, stripes"):
        build("sd-style", model, folder, tmp_path, forbidden="zigzag")
    with pytest.raises(DataError, match="no column 'caption'"):
        build("sd-style", model, folder, tmp_path, text_column="caption")
    with pytest.raises(ConfigError, match="float16 needs a CUDA device"):
        build("sd-style", model, folder, tmp_path, device=torch.device("cpu"), dtype="float16")
    corrupt = make_captioned_folder(tmp_path / "corrupt", per_pair=4)
    (corrupt / "000.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot read image .*000.png"):
        build("sd-style", model, corrupt, tmp_path)
