"""The shared :class:`~bench.contracts.TaskInstance` of the LLM tasks: data views, losses, utility, outputs.

Both LLM tasks hold their data as token sequences (:class:`~tasks.llm.chat.Encoded`) in named parts:

* ``attack``: the attacker's harmful training data; ``replay``: benign exchanges the attacker mixes into each batch
  (``replay_fraction``) so that "usable" keeps a meaning (measured on the tiny tier: without replay, undefended
  AdamW at 1e-3 multiplies benign NLL by 6 within 60 steps, and every run ends broken rather than harmed); the
  ``benign-ft`` and ``harmful-mix`` attacks train on ``replay`` with a few or no ``attack`` examples mixed in
  (:meth:`LLMInstance.mixed_batches`);
* ``defender_harmful`` / ``defender_benign``: the defender's split; ``defender_aligned``: the defender's harmful
  inputs (the same token prefix, item by item) with the *safe* target each task defines (a refusal; a non-answer);
  ``eval_benign``: held-out benign exchanges.

Every loss is the mean NLL of response tokens (:func:`~tasks.llm.chat.response_loss`); with ``reduction="none"``
the mean over each example's own response tokens. The defender view's features are the decoder blocks' hidden states
and its predictions the next-token logits, both at the positions that loss counts (one row per response token).

Utility is measured twice: the probe's **benign NLL per character** on a fixed subset of ``eval_benign`` (lower is
better; usable while at most ``usable_factor`` = 2 times the released model's, the paper's † "perplexity at most
doubled"), and in :meth:`evaluate` on ``eval_benign`` (all, or the first ``eval_size``) plus the lm-eval tasks
(:mod:`tasks.llm.utility`). Subclasses supply the harm measures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bench.config import check
from bench.contracts import AttackerScale, DefenderView, Evaluation, Predictions, Score, TaskConfig, TaskInstance
from bench.errors import PluginError
from bench.modelio import transformers_architecture
from bench.toolkit import stage_clock
from bench.toolkit.features import capture, rows_of, transformer_blocks
from bench.toolkit.replay import replay_draws
from tasks.llm import chunked
from tasks.llm.chat import Batch, Encoded, collate, logits_of, nll_per_char, response_loss
from tasks.llm.generation import context_length
from tasks.llm.utility import LMEvalSuite

PARTS = ("attack", "replay", "defender_harmful", "defender_benign", "defender_aligned", "eval_benign")
DEFENDER_PARTS = {"harmful": "defender_harmful", "benign": "defender_benign", "aligned": "defender_aligned"}
"""The defender view's part names and the data parts that hold them."""
REFERENCE_ITEMS = 16
"""Benign exchanges whose logits are compared between released and defended models."""
LLAMA_LORA_TARGETS = ("*q_proj", "*k_proj", "*v_proj", "*o_proj", "*gate_proj", "*up_proj", "*down_proj")


class LLMInstance(TaskInstance):
    """A causal LM task over encoded chat data (see the module docstring)."""

    @property
    def stage_portable(self) -> bool:
        """The tiny tier's stages are portable (its released model is built once, from a config, and cached)."""
        return self.tier == "tiny"

    defender_setting = "chat"
    """:attr:`DefenderView.setting` (a knowledge task overrides it)."""

    utility_metric = "benign_nll"
    utility_higher_is_better = False
    output_kind = "logits"

    def __init__(self, *, name: str, tier: str, config: TaskConfig, model: nn.Module, tokenizer,
                 parts: Mapping[str, Sequence[Encoded]], utility: LMEvalSuite,
                 lora_targets: Sequence[str] = LLAMA_LORA_TARGETS, attacker: AttackerScale | None = None,
                 provenance: Mapping[str, Any] | None = None):
        missing = [p for p in PARTS if not parts.get(p)]
        if missing:
            raise ValueError(f"{name}: empty or missing data parts {missing}")
        if len(parts["defender_aligned"]) != len(parts["defender_harmful"]):
            raise ValueError(f"{name}: defender_aligned must pair every defender_harmful item "
                             f"({len(parts['defender_aligned'])} vs {len(parts['defender_harmful'])})")
        self.name, self.tier, self.config, self.model, self.tokenizer = name, tier, config, model, tokenizer
        self.parts = {k: list(v) for k, v in parts.items()}
        self.utility = utility
        self.lora_targets = tuple(lora_targets)
        self.attacker = attacker
        self.feature_modules = transformer_blocks(model)
        self._provenance = dict(provenance or {})
        self.pad_id = tokenizer.pad_token_id
        context = context_length(model)  # never longer than the model's positions (GPT-2: n_positions)
        self.max_length = config.max_length if context is None else min(config.max_length, context)
        self._probe_benign = self.batches(self.parts["eval_benign"][:config.probe_size])
        self._eval_benign = self.batches(self.parts["eval_benign"][:config.eval_size or None])

    # -- batches -------------------------------------------------------------------------------------------------
    def batch(self, items: Sequence[Encoded]) -> Batch:
        return collate(items, self.pad_id, self.max_length)

    def batches(self, items: Sequence[Encoded]) -> list[Batch]:
        """Fixed evaluation batches, grouped by length so that little padding is computed."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        size = self.config.eval_batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        return [self.batch([items[i] for i in chunk]) for chunk in chunks]

    def _device_batch(self, model: nn.Module, batch: Batch) -> Batch:
        return batch.to(next(model.parameters()).device)

    # -- attacker ------------------------------------------------------------------------------------------------
    def attack_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        harmful, replay = self.parts["attack"], self.parts["replay"]
        for hi, ri in replay_draws(len(harmful), len(replay), batch_size, self.config.replay_fraction, generator):
            yield self.batch([harmful[i] for i in hi.tolist()] + [replay[i] for i in ri.tolist()])

    def mixed_batches(self, batch_size: int, generator: torch.Generator, harmful_fraction: float) -> Iterator[Batch]:
        """Batches of the attacker's benign exchanges (``replay``) in which each example is an ``attack`` example
        with probability ``harmful_fraction``, drawn with replacement (see :meth:`TaskInstance.mixed_batches`)."""
        check(0 <= harmful_fraction <= 1, f"harmful_fraction must be in [0, 1], got {harmful_fraction}")
        check(batch_size >= 1, f"batch_size must be positive, got {batch_size}")
        harmful, benign = self.parts["attack"], self.parts["replay"]

        def draws() -> Iterator[Batch]:
            while True:
                poisoned = torch.rand(batch_size, generator=generator) < harmful_fraction
                picks = [(harmful, int(torch.randint(0, len(harmful), (), generator=generator))) if is_harmful
                         else (benign, int(torch.randint(0, len(benign), (), generator=generator)))
                         for is_harmful in poisoned.tolist()]
                yield self.batch([items[i] for items, i in picks])

        return draws()

    def attack_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Response NLL over the attacker's mixed batch (harmful targets and replayed benign answers together)."""
        return response_loss(model, self._device_batch(model, batch))

    def harmful_loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """Response NLL of the harmful target (the compliant answer; the hazardous text) on harmful data."""
        return response_loss(model, self._device_batch(model, batch), reduction)

    def benign_loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """Response NLL of the benign answers on benign chat data (the retain loss)."""
        return response_loss(model, self._device_batch(model, batch), reduction)

    def aligned_loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """Response NLL of the safe target on the defender's harmful inputs (``defender_aligned``)."""
        return response_loss(model, self._device_batch(model, batch), reduction)

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return logits_of(model, self._device_batch(model, batch))

    # -- defender ------------------------------------------------------------------------------------------------
    def _fixed_batches(self, items: Sequence[Encoded]) -> list[Batch]:
        # In data order (not grouped by length like evaluation batches), so aligned[i] pairs with harmful[i].
        size = self.config.batch_size
        return [self.batch(items[i:i + size]) for i in range(0, len(items), size)]

    def _stream(self, part: str, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Endless shuffled batches of one defender part (``pairs``: harmful and aligned over the same items)."""
        if part != "pairs" and part not in DEFENDER_PARTS:
            raise PluginError(f"no defender stream {part!r}; choose from {', '.join([*DEFENDER_PARTS, 'pairs'])}")
        keys = ("defender_harmful", "defender_aligned") if part == "pairs" else (DEFENDER_PARTS[part],)
        return self._shuffled([self.parts[k] for k in keys], batch_size, generator, pairs=part == "pairs")

    def _shuffled(self, sources: list[list[Encoded]], batch_size: int, generator: torch.Generator,
                  pairs: bool) -> Iterator[Any]:
        n = len(sources[0])
        size = min(batch_size, n)
        while True:  # one permutation per epoch; the last incomplete batch is dropped, so batches keep their size
            order = torch.randperm(n, generator=generator).tolist()
            for start in range(0, n - size + 1, size):
                batches = tuple(self.batch([items[i] for i in order[start:start + size]]) for items in sources)
                yield batches if pairs else batches[0]

    def _features(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Each decoder block's output at the response positions: (response tokens, hidden) rows."""
        batch = self._device_batch(model, batch)
        with capture(model, self.feature_modules) as captured:
            logits_of(model, batch)
        positions = batch.response_positions
        return {name: rows_of(captured[name], positions) for name in self.feature_modules}

    def _predictions(self, model: nn.Module, batch: Batch) -> Predictions:
        """Next-token logits (float32) and the next tokens at every response position, one row per token."""
        batch = self._device_batch(model, batch)
        logits = logits_of(model, batch)[:, :-1].float()
        mask = batch.loss_mask.bool()
        example = torch.arange(len(batch), device=mask.device).unsqueeze(1).expand_as(mask)
        return Predictions(outputs=logits[mask], targets=batch.input_ids[:, 1:][mask], example=example[mask],
                           kind="logits", examples=len(batch))

    def defender_view(self) -> DefenderView:
        return DefenderView(
            harmful=self._fixed_batches(self.parts["defender_harmful"]),
            benign=self._fixed_batches(self.parts["defender_benign"]),
            harmful_loss=self.harmful_loss,
            benign_loss=self.benign_loss,
            aligned=self._fixed_batches(self.parts["defender_aligned"]),
            aligned_loss=self.aligned_loss,
            stream=self._stream,
            feature_modules=self.feature_modules,
            features=self._features if self.feature_modules else None,
            predictions=self._predictions,
            attacker=self.attacker,
            setting=self.defender_setting,
        )

    # -- measurement ---------------------------------------------------------------------------------------------
    def nll_items(self, model: nn.Module, batches: Sequence[Batch]) -> np.ndarray:
        """Per-item NLL per character over fixed batches (non-finite values stay, so breakage shows)."""
        with torch.no_grad():
            return np.concatenate([nll_per_char(model, self._device_batch(model, b)).numpy() for b in batches])

    def benign_probe(self, model: nn.Module) -> float:
        return _finite_mean(self.nll_items(model, self._probe_benign))

    def utility_scores(self, model: nn.Module) -> tuple[dict[str, Score], dict[str, Score]]:
        """All utility metrics (benign NLL per item, then lm-eval tasks) and lm-eval's stderrs as extras."""
        with stage_clock.part("benign_nll", f"{sum(len(b.input_ids) for b in self._eval_benign)} exchanges"):
            nll = self.nll_items(model, self._eval_benign)
        scores = {self.utility_metric: Score(_finite_mean(nll), _capped(nll), higher_is_better=False)}
        with stage_clock.part("lm_eval"):
            lm_scores, stderrs = self.utility.evaluate(model)
        return {**scores, **lm_scores}, stderrs

    def evaluation(self, harm: Score, model: nn.Module, extras: Mapping[str, Score]) -> Evaluation:
        utility, stderrs = self.utility_scores(model)
        return Evaluation(harm=harm, utility=utility, extras={**extras, **stderrs})

    def reference_outputs(self, model: nn.Module) -> torch.Tensor:
        batch = self._device_batch(model, self.batch(self.parts["eval_benign"][:REFERENCE_ITEMS]))
        parts = chunked.head_of(model)
        vocab = getattr(getattr(model, "config", None), "vocab_size", 0) or 0
        if parts is not None and batch.input_ids.numel() * vocab > chunked.FULL_LOGITS_LIMIT:  # a big vocabulary
            positions = batch.attention_mask.bool()
            return chunked.logits_at(model, batch.input_ids, batch.attention_mask, positions, parts).cpu()
        logits = logits_of(model, batch).float()
        return logits[batch.attention_mask.bool()].cpu()  # (real tokens, vocab): padding positions are not outputs

    def curvature_batch(self) -> Batch:
        items = self.parts["attack"][:self.config.curvature_batch_size]
        return collate(items, self.pad_id, min(self.max_length, self.config.curvature_max_length))

    def architecture(self) -> Mapping[str, Any]:
        return transformers_architecture(self.model)

    def provenance(self) -> Mapping[str, Any]:
        return self._provenance


def _finite_mean(values: np.ndarray) -> float:
    """Mean of per-item values; any non-finite item makes it infinite (a model emitting NaN is not usable)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if np.isfinite(values).all() else math.inf


def _capped(values: np.ndarray) -> np.ndarray:
    """Per-item values with non-finite entries replaced by a large finite NLL, so bootstrap CIs stay defined."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=1e6, posinf=1e6, neginf=1e6)
