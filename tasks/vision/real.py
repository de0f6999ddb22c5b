"""Real tier of ``vision-digits``: a Hugging Face image classifier and an image dataset instead of the tiny MLP.

``--model`` is a hub id or a local folder loadable by ``AutoModelForImageClassification`` (ViTForImageClassification
is the tested case), loaded in float32 with eager attention. Its ``AutoImageProcessor`` preprocesses the images; a
folder without a processor config falls back to a ``ViTImageProcessor`` at the config's ``image_size`` (warned).

Options (:class:`~tasks.vision.task.VisionConfig`):

* ``dataset``: a hub dataset id (read from the local HF cache when offline) or a local image folder with
  class-named subfolders, optionally under ``train/``/``test/`` (``datasets``' "imagefolder" layout). All of its
  splits are pooled and re-split here, so the six splits follow the same recipe as the tiny tier (fixed seed,
  stratified per class, disjoint): allowed classes → replay 55% / defender 15% / eval 30%, forbidden classes →
  attack 50% / defender 15% / eval 35%. ``image_column`` and ``label_column`` name the columns;
  ``max_per_class`` caps the examples kept per class (all kept images are preprocessed once and held in memory).
* ``forbidden_classes``: class names, or integer indices into the dataset's class list; default: the upper half
  (classes ``ceil(K/2)..K-1`` of K; for 10 classes 5-9, as in the tiny tier).
* Labels → model outputs: when every dataset class name is a label of the model (``config.label2id``, exact or
  case-insensitive), targets are those ids; otherwise the model needs ``num_labels >=`` the number of classes and
  class ``i`` of the dataset is trained on output unit ``i`` (a warning says so).
* ``release_steps > 0``: the released model is the checkpoint fine-tuned with Adam (``release_lr``,
  ``release_seed``) on the allowed classes only (the replay split), so the forbidden outputs start unused, as in
  the tiny tier. The default ``release_lr`` on this tier is 5e-5 (fine-tuning a pretrained model), not the tiny MLP's 1e-3. The result
  is cached by a hash of the checkpoint's weights, the training data and the recipe. ``release_steps=0`` releases
  the checkpoint as-is (its forbidden-class accuracy should then already be below ``tau``).

The model and the data tensors live on the run's device (``--device``; default: ``cuda`` when available, else ``cpu``).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.cache import Cache
from bench.contracts import AttackerScale
from bench.errors import DataError
from bench.modelio import load_model, save_model, transformers_architecture, weights_identity
from bench.toolkit.features import transformer_blocks
from bench.toolkit.sources import first_line, load_failure, load_pooled_dataset, local_or_hub, looks_local
from tasks.vision.common import SPLITS, ClassificationInstance, Split, check_disjoint, train_classifier
from tasks.vision.digits import ALLOWED_FRACTIONS, DATA_SEED, FORBIDDEN_FRACTIONS

BUILDER_VERSION = 1  # bump when the released model's recipe changes, to invalidate caches
RELEASE_BATCH = 32
VIT_LORA_TARGETS = ("*.query", "*.key", "*.value", "*.attention.output.dense")
"""The standard LoRA targets of a ViT: the attention projections."""
PREPROCESS_CHUNK = 256
REAL_STEPS_TO_HARM = 64
REAL_ATTACK_LRS = (1e-5, 1e-4)
"""The simulated attacker of trained defenses on the real tier: the literature's scale (TAR's 64 inner steps, the
usual fine-tuning learning rates), not measured here; override the defense's steps and learning rates to change it."""


def pixel_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Moving the batch is a no-op when data and model share a device, and keeps any caller's CPU tensors working.
    return model(pixel_values=x.to(next(model.parameters()).device)).logits


def load_classifier(ref: str) -> tuple[nn.Module, object]:
    """The classifier (float32, eval mode) and its image processor, or a DataError naming ``ref``."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    where, hint = local_or_hub(ref, "model")
    try:
        model = AutoModelForImageClassification.from_pretrained(where, dtype=torch.float32, attn_implementation="eager")
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for unusable checkpoints
        raise load_failure(err, f"image classifier {ref!r}{hint}") from err
    try:
        processor = AutoImageProcessor.from_pretrained(where)
    except Exception as err:  # noqa: BLE001 - any failure means "no usable processor config"
        from transformers import ViTImageProcessor

        size = int(getattr(model.config, "image_size", 224))
        warnings.warn(f"{ref!r} has no usable image processor ({first_line(err)}); falling back to "
                      f"ViTImageProcessor(size={size}x{size}, mean=std=0.5): check it matches the model's training",
                      stacklevel=2)
        processor = ViTImageProcessor(size={"height": size, "width": size})
    return model.eval(), processor


def load_images(cfg, cache: Cache):
    """The dataset with all its splits pooled, images left undecoded (so that only kept examples are decoded)."""
    import datasets

    if not cfg.dataset:
        raise DataError("the real tier needs dataset=<hub dataset id or local image folder>")
    ref = cfg.dataset
    ds = load_pooled_dataset(ref, cache, layout="class-named subfolders of images",
                             columns=(cfg.image_column, cfg.label_column), column_hint="set image_column= / label_column=")
    if not isinstance(ds.features[cfg.image_column], datasets.Image):
        raise DataError(f"column {cfg.image_column!r} of {ref!r} is not an image column ({ds.features[cfg.image_column]})")
    return ds.cast_column(cfg.image_column, datasets.Image(decode=False))


def class_names_and_labels(ds, column: str) -> tuple[list[str], np.ndarray]:
    """Class names (from the ClassLabel feature when there is one) and each row's class index (-1: unlabeled)."""
    from datasets import ClassLabel

    raw = list(ds[column])
    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), np.asarray(raw, dtype=np.int64)
    values = sorted({v for v in raw if v is not None}, key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(values)}
    return [str(v) for v in values], np.asarray([index.get(v, -1) if v is not None else -1 for v in raw], dtype=np.int64)


def forbidden_indices(spec: tuple[str, ...], names: list[str]) -> list[int]:
    """Dataset class indices of ``spec`` (names first, then integer indices); default: the upper half."""
    # By default the larger half stays allowed, so utility is measured over at least as many classes.
    chosen = set(range((len(names) + 1) // 2, len(names))) if not spec else set()
    for text in (str(item).strip() for item in spec):
        if text in names:
            chosen.add(names.index(text))
        elif text.isdigit() and int(text) < len(names):
            chosen.add(int(text))
        else:
            raise DataError(f"unknown forbidden class {text!r}; available classes: {', '.join(names)} "
                            f"(or indices 0-{len(names) - 1})")
    if not chosen or len(chosen) == len(names):
        raise DataError(f"at least one class must stay allowed and one be forbidden (classes: {', '.join(names)}; "
                        f"forbidden: {', '.join(names[i] for i in sorted(chosen))})")
    return sorted(chosen)


def model_targets(names: list[str], model: nn.Module) -> tuple[list[int], str]:
    """The model's output unit for each dataset class, and how it was chosen ("names" or "indices")."""
    label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
    folded = {k.strip().lower(): v for k, v in label2id.items()}
    for table, key in ((label2id, str), (folded, lambda n: n.strip().lower())):
        if all(key(n) in table for n in names):
            return [table[key(n)] for n in names], "names"
    num_labels = int(model.config.num_labels)
    if num_labels < len(names):
        raise DataError(f"the model has {num_labels} output labels but the dataset has {len(names)} classes "
                        f"({', '.join(names)}), and the class names are not among the model's labels")
    warnings.warn(f"dataset class names are not all labels of the model; dataset class i is trained on output unit i "
                  f"(model labels: {', '.join(list(label2id)[:10])}{', ...' if len(label2id) > 10 else ''})", stacklevel=2)
    return list(range(len(names))), "indices"


def split_indices(labels: np.ndarray, forbidden: list[int], max_per_class: int) -> dict[str, np.ndarray]:
    """Stratified, fixed split of row indices into the six splits (see module docstring); rows labelled -1 skipped."""
    rng = np.random.default_rng(DATA_SEED)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in np.unique(labels[labels >= 0]):
        fractions = FORBIDDEN_FRACTIONS if cls in forbidden else ALLOWED_FRACTIONS
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if max_per_class:
            idx = idx[:max_per_class]
        start = 0
        for i, (name, fraction) in enumerate(fractions.items()):
            end = len(idx) if i == len(fractions) - 1 else start + int(round(fraction * len(idx)))
            parts[name].append(idx[start:end])
            start = end
    splits = {name: np.sort(np.concatenate(chunks or [np.zeros(0, np.int64)])) for name, chunks in parts.items()}
    check_disjoint(splits)
    empty = [name for name, idx in splits.items() if len(idx) == 0]
    if empty:
        raise DataError(f"too few examples per class: splits {empty} are empty ({len(labels)} rows)")
    return splits


def preprocess(ds, rows: np.ndarray, cfg, processor, channels: int) -> tuple[torch.Tensor, str]:
    """Pixel values of ``rows`` (in order) and a sha256 of their image bytes and labels; corrupt files → DataError."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    digest = hashlib.sha256()
    chunks = []
    for start in range(0, len(rows), PREPROCESS_CHUNK):
        batch = ds.select(rows[start:start + PREPROCESS_CHUNK].tolist())
        images = []
        for record, label in zip(batch[cfg.image_column], batch[cfg.label_column]):
            where = record.get("path") or "<embedded bytes>"
            try:
                data = record["bytes"] if record.get("bytes") is not None else Path(record["path"]).read_bytes()
                image = Image.open(io.BytesIO(data))
                image.load()
                images.append(image.convert(mode))
            except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on bad files
                raise DataError(f"cannot read image {where} of dataset {cfg.dataset!r}: {first_line(err)}") from err
            digest.update(f"{label}:{len(data)}:".encode() + data)
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"].float())
    return torch.cat(chunks), digest.hexdigest()


def hub_commit(ref: str, model: nn.Module) -> str | None:
    if getattr(model.config, "_commit_hash", None) or looks_local(ref):
        return getattr(model.config, "_commit_hash", None)
    try:  # the HF cache stores a hub model under snapshots/<commit>
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(ref, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None


def build_real(cfg, model: str, cache: Cache, device: torch.device, *, progress: bool = True
               ) -> ClassificationInstance:
    checkpoint, processor = load_classifier(model)
    ds = load_images(cfg, cache)
    names, labels = class_names_and_labels(ds, cfg.label_column)
    forbidden = forbidden_indices(cfg.forbidden_classes, names)
    targets, mapping = model_targets(names, checkpoint)
    indices = split_indices(labels, forbidden, cfg.max_per_class)
    rows = np.sort(np.concatenate(list(indices.values())))
    pixels, data_hash = preprocess(ds, rows, cfg, processor, int(getattr(checkpoint.config, "num_channels", 3)))
    position = {int(r): i for i, r in enumerate(rows)}
    target_of = torch.tensor(targets, dtype=torch.long)
    splits = {name: Split(pixels[torch.tensor([position[int(r)] for r in idx], dtype=torch.long)].to(device),
                          target_of[torch.from_numpy(labels[idx])].to(device)) for name, idx in indices.items()}
    del pixels
    try:
        with torch.no_grad():
            pixel_logits(checkpoint.to(device), splits["eval_benign"].x[:1])
    except Exception as err:  # a processor that does not fit the model fails here, not deep inside the runner
        raise DataError(f"model {model!r} cannot classify the preprocessed images "
                        f"{tuple(splits['eval_benign'].x.shape[1:])}: {first_line(err)}") from err
    architecture = transformers_architecture(checkpoint)
    weights_sha = weights_identity(checkpoint)
    replay = splits["replay"]
    config_json = json.dumps(architecture, sort_keys=True, default=str).encode()
    recipe = {"builder": BUILDER_VERSION, "model": model, "weights_sha256": weights_sha,
              "config_sha256": hashlib.sha256(config_json).hexdigest(),
              "replay_sha256": hashlib.sha256(replay.x.cpu().numpy().tobytes() + replay.y.cpu().numpy().tobytes()).hexdigest(),
              "steps": cfg.release_steps, "lr": cfg.release_lr_for("real"), "seed": cfg.release_seed, "batch": RELEASE_BATCH}
    released, released_from = checkpoint, "checkpoint"
    if cfg.release_steps > 0:
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

        def build(directory: Path) -> None:
            torch.manual_seed(cfg.release_seed)
            train_classifier(checkpoint, replay, steps=cfg.release_steps, lr=cfg.release_lr_for("real"), batch_size=RELEASE_BATCH,
                             seed=cfg.release_seed, forward=pixel_logits,
                             progress=f"fine-tuning {model} on allowed classes" if progress else None)
            save_model(checkpoint.cpu(), directory, architecture=architecture, extra={"recipe": recipe})

        directory, _ = cache.get_or_build(build, "vision-digits", "real", key)
        released, released_from = load_model(directory).to(device), str(directory)
    return ClassificationInstance(
        name="vision-digits", tier="real", config=cfg, model=released.eval(), splits=splits,
        replay_fraction=cfg.replay_fraction, forward=pixel_logits, eval_batch_size=64,
        lora_targets=VIT_LORA_TARGETS, architecture=architecture,
        feature_modules=transformer_blocks(released),
        attacker=AttackerScale(steps=REAL_STEPS_TO_HARM, lrs=REAL_ATTACK_LRS, batch_size=cfg.batch_size),
        provenance={
            "model": model, "model_commit": hub_commit(model, checkpoint), "model_weights_sha256": weights_sha,
            "image_processor": type(processor).__name__, "dataset": cfg.dataset, "dataset_sha256": data_hash,
            "class_names": names, "forbidden_classes": [names[i] for i in forbidden],
            "allowed_classes": [n for i, n in enumerate(names) if i not in forbidden],
            "label_mapping": mapping, "model_targets": dict(zip(names, targets)),
            "split_sizes": {k: len(v) for k, v in indices.items()},
            "released_model": released_from, "released_recipe": recipe if released is not checkpoint else None,
            "device": str(device)},
    )
