"""Utility through lm-eval: ``HFLM`` wrapped around the in-memory model, scored on a fixed set of tasks.

:class:`LMEvalSuite` loads its tasks once (shipped definitions from :mod:`tasks.llm.lmeval_tasks` as config dicts,
any other name through lm-eval's own task index) and evaluates any model on them with
``lm_eval.evaluator.evaluate``. For each task and metric it returns a :class:`~bench.contracts.Score` named
``<task>/<metric>`` with lm-eval's aggregate value, its direction, and the per-document values when the metric is a
mean over documents (accuracy), so the runner can compute paired bootstrap CIs of retained utility. lm-eval's own
stderr is returned beside it as ``<task>/<metric>_stderr`` (corpus-level metrics such as perplexity have none).

Two lm-eval behaviours are contained here: ``HFLM`` calls ``model.tie_weights()``, which on a model whose output
layer a defense or an attack restructured would overwrite it with the input embedding (it is disabled for the
call); and lm-eval draws progress bars per task and per request type, which are silenced.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from bench.contracts import Score
from bench.errors import DataError
from bench.toolkit.sources import first_line

BOOTSTRAP_ITERS = 100
"""Passed to lm-eval: mean metrics get their closed-form stderr; only bootstrappable aggregates resample."""


@contextlib.contextmanager
def _quiet(model: nn.Module) -> Iterator[None]:
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    model.tie_weights = lambda *args, **kwargs: None  # an instance attribute shadows the method for this call
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        del model.tie_weights
        logger.setLevel(level)


class LMEvalSuite:
    """A fixed list of lm-eval tasks, loaded once, evaluated on any model with the same tokenizer."""

    def __init__(self, specs: Sequence[str | dict[str, Any]], tokenizer, *, limit: int = 0, batch_size: int = 32,
                 max_length: int | None = None):
        from lm_eval.tasks import TaskManager

        self.tokenizer = tokenizer
        self.limit = limit or None
        self.batch_size = batch_size
        self.max_length = max_length
        self.names = [s if isinstance(s, str) else s["task"] for s in specs]
        needs_index = any(isinstance(s, str) for s in specs)
        logger = logging.getLogger("lm_eval")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                self.tasks = TaskManager(include_defaults=needs_index).load(list(specs)) if specs else None
        except Exception as err:  # lm-eval raises KeyError/ValueError/ConnectionError... for unknown or absent tasks
            raise DataError(f"cannot load lm-eval tasks {self.names} (standard tasks need their datasets in the local "
                            f"HF cache when offline): {first_line(err)}"
                            ) from err
        finally:
            logger.setLevel(level)

    def evaluate(self, model: nn.Module) -> tuple[dict[str, Score], dict[str, Score]]:
        """(utility scores, their lm-eval stderrs) of ``model`` on every task."""
        if self.tasks is None:
            return {}, {}
        from lm_eval import evaluator
        from lm_eval.models.huggingface import HFLM

        device = str(next(model.parameters()).device)
        with _quiet(model):
            lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size, device=device,
                      max_length=self.max_length)
            try:
                results = evaluator.evaluate(lm, self.tasks, limit=self.limit, bootstrap_iters=BOOTSTRAP_ITERS,
                                             log_samples=True)
            except (OverflowError, ZeroDivisionError):
                # lm-eval's perplexity aggregation overflows on a wrecked model (exp of a huge NLL); that utility is
                # infinite, not an error. Evaluate the tasks one by one so the others still get their values.
                return self._one_by_one(lm)
        return _scores(results, self.names)

    def _one_by_one(self, lm) -> tuple[dict[str, Score], dict[str, Score]]:
        from lm_eval import evaluator

        scores: dict[str, Score] = {}
        stderrs: dict[str, Score] = {}
        for name, task in self.tasks["tasks"].items():
            try:
                results = evaluator.evaluate(lm, {"tasks": {name: task}}, limit=self.limit,
                                             bootstrap_iters=BOOTSTRAP_ITERS, log_samples=True)
            except (OverflowError, ZeroDivisionError):
                for metric, higher in task.higher_is_better().items():
                    scores[f"{name}/{metric}"] = Score(math.nan if higher else math.inf, None, bool(higher))
                continue
            more, more_stderrs = _scores(results, [name])
            scores.update(more)
            stderrs.update(more_stderrs)
        return scores, stderrs


def _samples(results: Mapping[str, Any], name: str) -> list[dict]:
    """Per-document records of a task, or of every task under a group (a group's mean is over all of them)."""
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return list(results.get("samples", {}).get(name, []))
    return [record for child in children for record in _samples(results, child)]


def _scores(results: Mapping[str, Any], names: Sequence[str]) -> tuple[dict[str, Score], dict[str, Score]]:
    """One Score per (requested task or group, metric); subtasks of a group are folded into the group's score."""
    scores: dict[str, Score] = {}
    stderrs: dict[str, Score] = {}
    for task in names:
        metrics = results["results"].get(task, {})
        directions = results.get("higher_is_better", {}).get(task, {})
        samples = _samples(results, task)
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}[{filter_name}]"
            per_doc = [s.get(metric) for s in samples if s.get("filter", "none") == filter_name]
            items = None
            if per_doc and all(isinstance(v, (int, float, bool, np.number)) for v in per_doc):
                items = np.asarray(per_doc, dtype=np.float64)
                if not math.isclose(float(items.mean()), float(value), rel_tol=1e-6, abs_tol=1e-9):
                    items = None  # not a plain mean over documents: no per-item bootstrap for it
            scores[name] = Score(float(value), items, bool(directions.get(metric, True)))
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            if isinstance(stderr, (int, float)) and math.isfinite(stderr):
                stderrs[f"{name}_stderr"] = Score(float(stderr), None, False)
    return scores, stderrs
