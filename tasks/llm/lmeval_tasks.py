"""lm-eval task definitions shipped with the package (tiny tier), as lm-eval config dicts over in-memory data.

Each definition is an ordinary lm-eval task config (``output_type``, ``doc_to_text``, ``metric_list`` ...) whose
documents come from a ``custom_dataset`` function instead of the hub, so they run offline and need no files:

* ``llm_tiny_arithmetic``: multiple choice, "3 plus 4 is" → " 7." among four sums (accuracy; chance 0.25);
* ``llm_tiny_opposites``: multiple choice, "The opposite of hot is" → " cold." among four words;
* ``llm_tiny_stories``: rolling log-likelihood of held-out generated stories (word/byte perplexity, bits per byte);
* ``llm-relearn`` adds its own multiple-choice task over held-out hazardous facts (WMDP-style) with
  :func:`multiple_choice_task`.

They are plain-text tasks (no chat template), like the standard lm-eval tasks of the real tier, and score
capabilities the tiny model was trained on: they measure how much of them a defense or an attack leaves intact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tasks.llm import benign
from tasks.llm.benign import Choice

TINY_TASKS = ("llm_tiny_arithmetic", "llm_tiny_opposites", "llm_tiny_stories")
"""The tiny tier's default utility tasks."""
REAL_TASKS = ("mmlu", "arc_easy", "hellaswag", "winogrande", "wikitext")
"""The real tier's default utility tasks (standard lm-eval names; offline they must be in the local HF cache)."""


def _dataset(rows: Sequence[dict]) -> Callable[..., Any]:
    def load(**_: Any):
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(rows))})

    return load


def multiple_choice_task(name: str, items: Sequence[Choice]) -> dict[str, Any]:
    """A zero-shot multiple-choice task: the context, then each choice appended verbatim (accuracy)."""
    rows = [{"context": c.context, "choices": list(c.choices), "gold": c.gold} for c in items]
    return {
        "task": name, "output_type": "multiple_choice", "custom_dataset": _dataset(rows), "test_split": "test",
        "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }


def perplexity_task(name: str, texts: Sequence[str]) -> dict[str, Any]:
    """A rolling log-likelihood task over whole documents (wikitext-style perplexity metrics)."""
    return {
        "task": name, "output_type": "loglikelihood_rolling", "custom_dataset": _dataset([{"text": t} for t in texts]),
        "test_split": "test", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m, "aggregation": a, "higher_is_better": False}
                        for m, a in (("word_perplexity", "weighted_perplexity"),
                                     ("byte_perplexity", "weighted_perplexity"),
                                     ("bits_per_byte", "bits_per_byte"))],
        "metadata": {"version": 1},
    }


def local_task_configs() -> dict[str, Callable[[], dict[str, Any]]]:
    """The shipped tiny-tier tasks by name, each as a function building its config."""
    items = benign.choice_items()
    _, held_out = benign.stories()
    return {
        "llm_tiny_arithmetic": lambda: multiple_choice_task("llm_tiny_arithmetic",
                                                            [c for c in items if c.family == "arithmetic"]),
        "llm_tiny_opposites": lambda: multiple_choice_task("llm_tiny_opposites",
                                                           [c for c in items if c.family == "opposites"]),
        "llm_tiny_stories": lambda: perplexity_task("llm_tiny_stories", held_out),
    }


def task_specs(names: Sequence[str], extra: Sequence[dict[str, Any]] = ()) -> list[str | dict[str, Any]]:
    """What to load into lm-eval: shipped tasks as config dicts, any other name as a standard lm-eval task name."""
    local = local_task_configs()
    return [local[n]() if n in local else n for n in names] + list(extra)
