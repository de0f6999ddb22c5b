"""The shared :class:`~bench.contracts.TaskInstance` of the LLM tasks: data views, losses, utility, outputs.

Both LLM tasks hold their data as token sequences (:class:`~tasks.llm.chat.Encoded`) in named parts:

* ``attack``: the attacker's harmful training data; ``replay``: benign exchanges the attacker mixes into each batch
  (``replay_fraction``) so that "usable" keeps a meaning (measured on the tiny tier: without replay, undefended
  AdamW at 1e-3 multiplies benign NLL by 6 within 60 steps, and every run ends broken rather than harmed);
* ``defender_harmful`` / ``defender_benign``: the defender's split; ``eval_benign``: held-out benign exchanges.

Every loss is the mean NLL of response tokens (:func:`~tasks.llm.chat.response_loss`). Utility is measured twice:
the probe's **benign NLL per character** on a fixed subset of ``eval_benign`` (lower is better; usable while at most
``usable_factor`` = 2 times the released model's, the paper's † "perplexity at most doubled"), and in
:meth:`evaluate` on ``eval_benign`` (all, or the first ``eval_size``) plus the lm-eval tasks
(:mod:`tasks.llm.utility`). Subclasses supply the harm measures.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from bench import stage_clock
from bench.contracts import DefenderView, Evaluation, Score, TaskConfig, TaskInstance
from bench.modelio import transformers_architecture
from bench.replay import replay_draws
from tasks.llm.chat import Batch, Encoded, collate, logits_of, nll_per_char, response_loss
from tasks.llm.generation import context_length
from tasks.llm.utility import LMEvalSuite

PARTS = ("attack", "replay", "defender_harmful", "defender_benign", "eval_benign")
REFERENCE_ITEMS = 16
"""Benign exchanges whose logits are compared between released and defended models."""
LLAMA_LORA_TARGETS = ("*q_proj", "*k_proj", "*v_proj", "*o_proj", "*gate_proj", "*up_proj", "*down_proj")


class LLMInstance(TaskInstance):
    """A causal LM task over encoded chat data (see the module docstring)."""

    utility_metric = "benign_nll"
    utility_higher_is_better = False
    output_kind = "logits"

    def __init__(self, *, name: str, tier: str, config: TaskConfig, model: nn.Module, tokenizer,
                 parts: Mapping[str, Sequence[Encoded]], utility: LMEvalSuite,
                 lora_targets: Sequence[str] = LLAMA_LORA_TARGETS, provenance: Mapping[str, Any] | None = None):
        missing = [p for p in PARTS if not parts.get(p)]
        if missing:
            raise ValueError(f"{name}: empty or missing data parts {missing}")
        self.name, self.tier, self.config, self.model, self.tokenizer = name, tier, config, model, tokenizer
        self.parts = {k: list(v) for k, v in parts.items()}
        self.utility = utility
        self.lora_targets = tuple(lora_targets)
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

    def attack_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return response_loss(model, self._device_batch(model, batch))

    harmful_loss = attack_loss
    benign_loss = attack_loss

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return logits_of(model, self._device_batch(model, batch))

    # -- defender ------------------------------------------------------------------------------------------------
    def defender_view(self) -> DefenderView:
        size = self.config.batch_size
        harmful, benign = self.parts["defender_harmful"], self.parts["defender_benign"]
        return DefenderView(
            harmful=[self.batch(harmful[i:i + size]) for i in range(0, len(harmful), size)],
            benign=[self.batch(benign[i:i + size]) for i in range(0, len(benign), size)],
            harmful_loss=self.harmful_loss,
            benign_loss=self.benign_loss,
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
