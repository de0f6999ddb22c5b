"""What a defense may see of a task: the defender's data and losses (:class:`DefenderView`), the model's predictions
in a task-agnostic form, and how fast the undefended model is harmed (:class:`AttackerScale`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn


class Loss(Protocol):
    """A task loss: the mean over the batch, or one value per example with ``reduction="none"``."""

    def __call__(self, model: nn.Module, batch: Any, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        ...


@dataclass(frozen=True)
class Predictions:
    """A model's outputs at the positions a task's loss counts, flattened to rows, with their targets.

    Generic objectives (entropy, inverse cross-entropy, KL to uniform, denial-of-service, ...) are computed from it
    without knowing the task: for a classifier one row per image; for a causal LM one row per response token
    (next-token logits and the next token); for diffusion one row per image (the flattened predicted noise and its
    target). ``example`` maps rows to the batch's examples, for per-example reductions.
    """

    outputs: torch.Tensor
    """(N, C): logits over C classes or tokens (``kind="logits"``), or predicted values (``kind="regression"``)."""
    targets: torch.Tensor
    """(N,) class or token ids for logits; (N, C) target values for regression."""
    example: torch.Tensor
    """(N,) index of each row's example in the batch (long)."""
    kind: Literal["logits", "regression"]
    examples: int
    """Number of examples in the batch (some may have no rows)."""


@dataclass(frozen=True)
class AttackerScale:
    """How fast the undefended released model is harmed on this task and tier: trained defenses scale the attacker
    they simulate by it (BASELINES.md: inner-loop length about 1-2x the undefended steps-to-harm)."""

    steps: int
    """Undefended steps-to-harm of the default suite's fastest attack (measured; the tier's typical value)."""
    lrs: tuple[float, ...]
    """Learning rates at which undefended Adam harms fastest (the decades the suite found)."""
    batch_size: int
    """The attacker's batch size."""
    adam_steps: int | None = None
    """Undefended steps-to-harm of Adam/AdamW at ``lrs``, where the fastest attack behind ``steps`` is another
    optimizer (vision-digits tiny: Muon in 10, AdamW in 35); None: ``steps``. Defenses that simulate an AdamW
    attacker (TAR) size its inner loop by it."""
    sgd_steps: int | None = None
    """Undefended steps-to-harm of plain SGD at ``sgd_lrs``; None: ``steps``."""
    sgd_lrs: tuple[float, ...] = ()
    """Learning rates at which undefended plain SGD harms fastest (measured), for defenses that simulate an SGD
    attacker (Sophon): SGD at Adam's rates barely moves. Empty: not measured; such a defense then calibrates its own
    (see :func:`defenses._trained.sgd_rates`)."""


@dataclass(frozen=True)
class DefenderView:
    """What a defense may use: the defender split (never the attacker's or evaluation data) and the losses.

    Every built-in task fills every field. A third-party task may leave the optional ones unset; a defense that
    needs one raises a clear error (:func:`defenses._trained.require`).
    """

    harmful: Sequence[Any]
    """Fixed batches of harmful data reserved for the defender: harmful inputs with the *harmful* target (what the
    attacker trains toward: compliance, the forbidden style, the forbidden label)."""
    benign: Sequence[Any]
    """Fixed batches of benign (retain) data reserved for the defender."""
    harmful_loss: Loss
    """The harmful task's loss on a ``harmful`` batch (the attacker's objective without its replay)."""
    benign_loss: Loss
    """The benign task's loss on a ``benign`` batch (the retain loss)."""
    aligned: Sequence[Any] = ()
    """The defender's harmful inputs paired with the *safe* target: a refusal (LLM chat), the released model's own
    generations for the forbidden prompts (diffusion), the released model's predicted (allowed) label (vision).
    ``aligned[i]`` holds the inputs of ``harmful[i]``, example by example."""
    aligned_loss: Loss | None = None
    """The loss toward the safe target on an ``aligned`` batch."""
    stream: Callable[[str, int, torch.Generator], Iterator[Any]] | None = None
    """``stream(part, batch_size, generator)``: an endless stream of fresh batches of ``"harmful"``, ``"benign"`` or
    ``"aligned"`` drawn from the defender's split (shuffled; new timesteps and noise per batch where the task is
    stochastic), or of ``"pairs"``: ``(harmful_batch, aligned_batch)`` tuples over the same examples."""
    feature_modules: tuple[str, ...] = ()
    """Names of the modules whose outputs are the task's hidden representations (e.g. the decoder layers, the UNet's
    blocks, the classifier's penultimate layer), shallow to deep; defenses may hook them (e.g. to perturb them)."""
    features: Callable[[nn.Module, Any], dict[str, torch.Tensor]] | None = None
    """``features(model, batch)``: the outputs of ``feature_modules`` on a batch (forward hooks, with gradients),
    each flattened to (N, D) rows at the positions the loss counts (one row per image; per response token for an
    LLM), keyed by module name."""
    predictions: Callable[[nn.Module, Any], Predictions] | None = None
    """``predictions(model, batch)``: the model's outputs and targets at the positions the loss counts."""
    attacker: AttackerScale | None = None
    """How fast the undefended model is harmed here (what a simulated attacker is scaled by)."""
    setting: Literal["classification", "knowledge", "chat", "generation"] | None = None
    """What kind of capability the task's harm is, for defenses whose objective depends on it (TAR: a refusal
    preference for chat, maximum entropy for classification and knowledge, denial of service for generation)."""
    progress: bool = True
    """Whether a training defense may show a progress bar (the runner sets False under ``bench run --quiet``)."""
