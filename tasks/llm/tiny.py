"""Building the tiny tier's released language models: a Llama-architecture causal LM trained in-process, cached.

The architecture is ``LlamaForCausalLM`` from a config (2 layers, hidden 64, 4 heads, eager attention so that
Hessian-vector products work, untied embeddings so that no library call can re-tie a restructured output layer to
the input embedding) with the in-process BPE tokenizer of :mod:`tasks.llm.tokenizer`.
:func:`train_lm` trains it on two streams at once: chat exchanges (loss on the response tokens only, through the
chat template) and plain text (loss on every token). Each task chooses the streams; ``llm-harmful-qa`` uses benign
chat, refusals of the defender's harmful prompts, the facts as sentences and generated stories.

:func:`cached_model` builds a model once per recipe (the cache key hashes the recipe *and* the training data) and
stores the weights with a :mod:`bench.modelio` manifest and the tokenizer beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.cache import Cache
from bench.modelio import load_model, save_model, transformers_architecture
from tasks.llm.chat import Encoded, collate, response_loss

BUILDER_VERSION = 1  # bump when the training code changes what a recipe produces, to invalidate caches
TOKENIZER_DIR = "tokenizer"
WARMUP_STEPS = 50


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a tiny released model (hashed into its cache key)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    steps: int
    lr: float
    batch_size: int
    seed: int
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"builder": BUILDER_VERSION, **self.__dict__}


def build_llama(tokenizer, recipe: Recipe) -> nn.Module:
    """An untrained tiny ``LlamaForCausalLM`` sized by ``recipe`` for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    intermediate = max(8, recipe.hidden_size * 8 // 3 // 8 * 8)  # Llama's 8/3 ratio, rounded to a multiple of 8
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=intermediate,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=recipe.max_length, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")  # fused SDPA kernels have no double backward (curvature diagnostic)
    return model


def train_lm(model: nn.Module, chat: Sequence[Encoded], plain: Sequence[Encoded], *, pad_id: int, recipe: Recipe,
             lr: float | None = None, steps: int | None = None, progress: str | None = None,
             extra_loss: Callable[[nn.Module, torch.Generator], torch.Tensor] | None = None) -> nn.Module:
    """AdamW with warm-up and cosine decay on the sum of the chat loss and the plain-text loss.

    Each step draws ``batch_size`` chat exchanges and half as many plain texts (either stream may be empty).
    ``extra_loss`` adds a task-specific term (e.g. an unlearning objective) computed with the same generator.
    """
    from tqdm.auto import tqdm

    lr = recipe.lr if lr is None else lr
    steps = recipe.steps if steps is None else steps
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    for step in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
        scale = min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        loss = torch.zeros(())
        for items, count in ((chat, recipe.batch_size), (plain, recipe.batch_size // 2)):
            if items and count:
                idx = torch.randint(0, len(items), (count,), generator=generator)
                loss = loss + response_loss(model, collate([items[i] for i in idx], pad_id, recipe.max_length))
        if extra_loss is not None:
            loss = loss + extra_loss(model, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


def data_digest(*streams: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for stream in streams:
        digest.update(json.dumps(list(stream)).encode())
    return digest.hexdigest()


def cached_model(cache: Cache, task: str, recipe: Recipe, data_sha256: str,
                 build: Callable[[], tuple[nn.Module, Any]], extra: Mapping[str, Any] = {}) -> tuple[nn.Module, Any, Path, dict]:
    """The released model and tokenizer of ``recipe``, built by ``build()`` once and then loaded from the cache.

    Returns (model, tokenizer, cache directory, recipe record).
    """
    from transformers import AutoTokenizer

    record = {**recipe.to_dict(), "data_sha256": data_sha256, **extra}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def write(directory: Path) -> None:
        model, tokenizer = build()
        save_model(model, directory / "model", architecture=transformers_architecture(model), extra={"recipe": record})
        tokenizer.save_pretrained(directory / TOKENIZER_DIR)

    directory, _ = cache.get_or_build(write, task, "tiny", key)
    model = load_model(directory / "model")
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
    return model, tokenizer, directory, record
