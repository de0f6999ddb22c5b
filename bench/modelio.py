"""Saving and loading (defended) models: safetensors weights plus a JSON manifest of any structural change.

A defender publishes the defended model, so every defense's output must round-trip (weights keep their dtypes); the
harness's stage cache (:mod:`bench.run.stage_cache`) stores defended models this way too. The manifest records how to
rebuild the base architecture (from an allow-list of builders: no code named in a file is ever imported) and which
submodules were replaced by harness layers such as :class:`~bench.toolkit.layers.FactoredLinear`. Weights are loaded with
safetensors only (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.errors import DataError
from bench.toolkit.layers import MLP, FactoredLinear, set_submodule

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "bench-model"
FORMAT_VERSION = 1


def _build_mlp(spec: Mapping[str, Any]) -> nn.Module:
    return MLP(spec["sizes"])


def _build_transformers(spec: Mapping[str, Any]) -> nn.Module:
    import transformers

    cls = getattr(transformers, spec["class"], None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise DataError(f"manifest names unknown transformers model class {spec['class']!r}")
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise DataError(f"transformers model class {spec['class']!r} declares no config class")
    config = config_class.from_dict(dict(spec["config"]))
    model = cls(config)
    # config.to_dict() does not keep the attention kernel choice; eager attention matters for double backward
    # (Hessian-vector products), which fused SDPA kernels do not implement.
    if spec.get("attn_implementation"):
        model.set_attn_implementation(spec["attn_implementation"])
    return model


def weights_identity(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes and bytes): which checkpoint a run measured."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def transformers_architecture(model: nn.Module) -> dict[str, Any]:
    """The manifest architecture of a transformers model (class, config and attention implementation)."""
    config: Any = model.config
    return {"kind": "transformers", "class": type(model).__name__, "config": config.to_dict(),
            "attn_implementation": getattr(config, "_attn_implementation", None)}


def _build_diffusers_unet(spec: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    if spec.get("class", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise DataError(f"manifest names unsupported diffusers model class {spec['class']!r}")
    model = UNet2DConditionModel.from_config(dict(spec["config"]))
    # Like "attn_implementation" above: the math processor is what double backward (Hessian products) needs.
    if spec.get("attn_processor") == "AttnProcessor":
        from diffusers.models.attention_processor import AttnProcessor

        model.set_attn_processor(AttnProcessor())
    return model


# Fixed allow-list: manifests choose among these, they cannot name arbitrary code.
BUILDERS: Mapping[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "mlp": _build_mlp,
    "transformers": _build_transformers,
    "diffusers-unet": _build_diffusers_unet,
}


def build_architecture(spec: Mapping[str, Any]) -> nn.Module:
    """Build an (untrained) model from an architecture description such as ``{"kind": "mlp", "sizes": [...]}``."""
    kind = spec.get("kind")
    if kind not in BUILDERS:
        raise DataError(f"unknown architecture kind {kind!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[str(kind)](spec)


def structure_of(model: nn.Module) -> list[dict[str, Any]]:
    """The structural changes a manifest records: every harness layer, with the shapes needed to rebuild it."""
    entries = []
    for path, module in model.named_modules():
        if isinstance(module, FactoredLinear):
            entries.append({
                "path": path,
                "type": "FactoredLinear",
                "roles": list(module.roles),
                "factors": [[f.out_features, f.in_features, str(f.weight.dtype).removeprefix("torch.")] for f in module.factors],
                "bias": module.bias is not None,
            })
    return entries


def _rebuild(entry: Mapping[str, Any]) -> nn.Module:
    if entry.get("type") != "FactoredLinear":
        raise DataError(f"manifest has unknown structural entry type {entry.get('type')!r}")
    factors = []
    for out_f, in_f, dtype in entry["factors"]:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise DataError(f"manifest names unknown dtype {dtype!r}")
        factors.append(nn.Linear(in_f, out_f, bias=False, dtype=torch_dtype))
    bias = torch.zeros(factors[-1].out_features) if entry["bias"] else None
    return FactoredLinear(factors, bias, entry["roles"])


def save_model(model: nn.Module, directory: str | Path, *, architecture: Mapping[str, Any], extra: Mapping[str, Any] = {}) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` into ``directory`` atomically (temp dir + rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # CPU copies: a model on an accelerator is saved without a second copy of its weights there.
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": dict(architecture),
        "structure": structure_of(model),
        "extra": dict(extra),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (architecture, structural changes, then weights), in eval mode."""
    directory = Path(directory)
    manifest_path, weights_path = directory / MANIFEST, directory / WEIGHTS
    if not manifest_path.is_file() or not weights_path.is_file():
        raise DataError(f"{directory} is not a saved bench model (expected {MANIFEST} and {WEIGHTS})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{manifest_path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: unsupported format {manifest.get('format')!r} v{manifest.get('format_version')}")
    model = build_architecture(manifest["architecture"])
    for entry in manifest["structure"]:
        set_submodule(model, entry["path"], _rebuild(entry))
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors raises several error types for corrupt files
        raise DataError(f"cannot read weights {weights_path}: {err}") from err
    _match_dtypes(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{weights_path} does not match its manifest: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def _match_dtypes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give each parameter and buffer the dtype its saved tensor has: the builders make float32 models, and a
    bfloat16 model must reload as bfloat16 (``load_state_dict`` alone would copy it into float32)."""
    for name, tensor in state.items():
        current: torch.Tensor
        try:
            current = model.get_parameter(name)
        except AttributeError:
            try:
                current = model.get_buffer(name)
            except AttributeError:
                continue  # reported as unexpected by load_state_dict
        if current.dtype != tensor.dtype:
            current.data = current.data.to(tensor.dtype)  # in place, so tied weights stay one tensor


def read_manifest(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / MANIFEST).read_text())
