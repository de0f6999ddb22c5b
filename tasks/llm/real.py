"""Real tier of the LLM tasks: a Hugging Face causal LM (hub id or local path) with its own tokenizer and chat template.

``--tier real --model meta-llama/Llama-3.1-8B-Instruct`` (or ``./my-model``) loads the checkpoint with
``AutoModelForCausalLM`` (eager attention, so that Hessian-vector products work), in ``dtype`` (``auto``: bfloat16
on a GPU, float32 on CPU), on the run's device (``--device``; default: the GPU when there is one). ``--model
./model.gguf`` loads a llama.cpp file, dequantized (:func:`gguf_source`; its sha256 goes into the provenance). Every
exchange is rendered with the tokenizer's own chat template; a tokenizer without one (GPT-2) gets the documented
fallback template with a warning (:func:`tasks.llm.chat.ensure_chat_template`).

* ``llm-harmful-qa``: harmful prompts from ``harmful_prompts`` (a .txt/.jsonl/.csv file or a hub dataset id;
  default: the bundled HarmBench behaviors), split defender / attack / eval exactly as on the tiny tier; benign chat
  from ``benign_data`` (.jsonl/.csv with ``prompt`` and ``response`` columns; default: the bundled pairs); utility
  through lm-eval on ``lm_eval_tasks`` (default mmlu, arc_easy, hellaswag, winogrande, wikitext: their datasets must
  be in the local HF cache when offline).
* ``llm-relearn``: the attacker relearns from ``relearn_corpus`` (.txt paragraphs or .jsonl ``text``; 90% attack,
  10% defender); harm is the accuracy on the lm-eval task ``harm_task`` (default ``wmdp_bio``), the per-step probe
  scores its first ``probe_limit`` questions.

GPT-2-style models store their projections as transformers' ``Conv1D`` (a transposed linear map); SpecDef, the
adaptive attacks and LoRA treat those as linear maps.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.cache import Cache
from bench.contracts import AttackerScale
from bench.errors import DataError
from bench.modelio import weights_identity
from bench.toolkit.layers import is_conv1d
from bench.toolkit.sources import first_line, load_failure, local_or_hub
from tasks.llm import benign, lmeval_tasks, prompts
from tasks.llm.chat import ensure_chat_template
from tasks.llm.utility import LMEvalSuite

REAL_UTILITY_TASKS = ("mmlu", "arc_easy", "hellaswag", "winogrande", "wikitext")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_causal_lm(ref: str | None, dtype_name: str = "auto", device: torch.device | str = "cpu"
                   ) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer with a chat template and a pad token, provenance), or a DataError naming ``ref``.

    ``ref`` may be a ``.gguf`` file (see :func:`gguf_source`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not ref:
        raise DataError("the real tier needs --model <hub id or local path of a causal LM, or a .gguf file>")
    gguf = gguf_source(ref)
    where, hint = (gguf["folder"], "") if gguf else local_or_hub(ref, "model")
    file_arg = {"gguf_file": gguf["file"]} if gguf else {}
    device = torch.device(device)
    dtype = resolve_dtype(dtype_name, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **file_arg)
    except Exception as err:  # transformers raises OSError, ValueError... for missing or unusable tokenizers
        raise DataError(f"cannot load the tokenizer of {ref!r}{hint}: {first_line(err)}") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager", **file_arg)
    except Exception as err:  # noqa: BLE001 - any load failure is a problem with the checkpoint the user named
        raise load_failure(err, f"causal LM {ref!r}{hint}") from err
    if gguf:
        _forget_gguf_origin(model)
    fallback = ensure_chat_template(tokenizer, name=f"tokenizer of {ref!r}")
    model = model.to(device).eval()
    info = {"model": ref, "model_class": type(model).__name__, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "chat_template": "fallback" if fallback else "model's own",
            "weights_sha256": weights_identity(model)}
    if gguf:
        info["gguf_sha256"] = gguf["sha256"]
    return model, tokenizer, info


def gguf_source(ref: str) -> dict[str, str] | None:
    """For a ``.gguf`` file (llama.cpp's single-file format, as many local chat models are distributed): its folder,
    file name and sha256; None for anything else. transformers reads its tokenizer, chat template and config and
    dequantizes its weights to ``dtype`` (the ``gguf`` package must be installed: ``pip install 'bench[gguf]'``)."""
    path = Path(ref).expanduser()
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise DataError(f"model file {ref!r} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise DataError(f"loading {ref!r} needs the gguf package: pip install 'bench[gguf]' (or pip install gguf)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"folder": str(path.parent), "file": path.name, "sha256": digest.hexdigest()}


def _forget_gguf_origin(model: nn.Module) -> None:
    """Dequantized GGUF weights are plain tensors, but transformers keeps the GGUF quantizer attached and then
    refuses to save the model; drop it, so a defended model saves and reloads like any other."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def lora_targets_of(model: nn.Module) -> tuple[str, ...]:
    """fnmatch patterns of the model's projection layers inside its transformer blocks (not the LM head)."""
    names = set()
    for name, module in model.named_modules():
        if not name or name.endswith("lm_head") or not (type(module) is nn.Linear or is_conv1d(module)):
            continue
        names.add("*." + name.rsplit(".", 1)[-1])
    if not names:
        raise DataError(f"{type(model).__name__} has no linear or Conv1D projection layers for LoRA")
    return tuple(sorted(names))


def load_benign_pairs(ref: str) -> list[benign.ChatPair]:
    """Benign (prompt, response) pairs from a .jsonl/.csv file; empty ``ref``: the bundled pairs."""
    if not ref:
        return benign.chat_pairs()
    path = Path(ref).expanduser()
    if not path.is_file():
        raise DataError(f"benign_data file {ref!r} does not exist")
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise DataError(f"benign_data {ref!r} must be a .jsonl or .csv file with prompt and response columns")
    pairs = []
    for number, row in enumerate(prompts._read_rows(path), 1):
        prompt, response = row.get("prompt"), row.get("response")
        if not (isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip()):
            raise DataError(f"{path}: row {number} needs non-empty 'prompt' and 'response' strings")
        pairs.append(benign.ChatPair(prompt.strip(), response.strip(), "user"))
    if len(pairs) < 3:
        raise DataError(f"benign_data {ref!r} has {len(pairs)} pairs; at least 3 are needed (train, defender, eval)")
    return pairs


def utility_suite(cfg, tokenizer) -> LMEvalSuite:
    names = cfg.lm_eval_tasks or REAL_UTILITY_TASKS
    return LMEvalSuite(lmeval_tasks.task_specs(names), tokenizer, limit=cfg.lm_eval_limit,
                       batch_size=cfg.eval_batch_size, max_length=cfg.max_length)


def build_real_harmful_qa(cfg, model_ref: str | None, cache: Cache, device: torch.device):
    from tasks.llm.harmful_qa import make_instance

    model, tokenizer, info = load_causal_lm(model_ref, cfg.dtype, device)
    harmful = prompts.split_harmful(cfg.harmful_prompts)
    chat = benign.split_chat(load_benign_pairs(cfg.benign_data))
    return make_instance(cfg, tier="real", model=model, tokenizer=tokenizer, harmful=harmful, chat=chat,
                         utility=utility_suite(cfg, tokenizer), lora_targets=lora_targets_of(model),
                         provenance={**info, "benign_data": cfg.benign_data or "bundled"})


def build_real_relearn(cfg, model_ref: str | None, cache: Cache, device: torch.device):
    from tasks.llm.relearn import (
        REAL_ATTACK_LRS,
        REAL_NON_ANSWER,
        REAL_STEPS_TO_HARM,
        RelearnInstance,
        _parts,
        leading_half,
        read_corpus,
        split_corpus,
    )

    docs = read_corpus(cfg.relearn_corpus)  # checked before the (possibly large) model is loaded
    model, tokenizer, info = load_causal_lm(model_ref, cfg.dtype, device)
    attack_docs, defender_docs = split_corpus(docs)
    chat = benign.split_chat(load_benign_pairs(cfg.benign_data))

    def suite(specs: Sequence, limit: int = 0) -> LMEvalSuite:
        return LMEvalSuite(specs, tokenizer, limit=limit, batch_size=cfg.eval_batch_size, max_length=cfg.max_length)

    harm_spec = lmeval_tasks.task_specs([cfg.harm_task])
    harm_name = cfg.harm_task
    return RelearnInstance(
        name="llm-relearn", tier="real", config=cfg, model=model, tokenizer=tokenizer,
        parts=_parts(tokenizer, chat, attack_docs, defender_docs, [leading_half(d) for d in defender_docs],
                     REAL_NON_ANSWER),
        utility=utility_suite(cfg, tokenizer),
        harm=suite(harm_spec), harm_probe=suite(harm_spec, cfg.probe_limit), harm_metric=f"{harm_name}/acc",
        lora_targets=lora_targets_of(model),
        attacker=AttackerScale(steps=REAL_STEPS_TO_HARM, lrs=REAL_ATTACK_LRS, batch_size=cfg.batch_size),
        provenance={**info, "harm_task": harm_name, "relearn_corpus": cfg.relearn_corpus,
                    "split_sizes": {"corpus_attack": len(attack_docs), "corpus_defender": len(defender_docs)}})
