"""Task-agnostic objectives of trained defenses, computed from a view's :class:`~bench.contracts.Predictions` and
features: entropy, inverse cross-entropy, KL to uniform, denial-of-service, per-example means, sequence
log-probabilities, MMD to noise, bounded gradient ascent."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from bench.contracts import Predictions


def per_example(values: torch.Tensor, pred: Predictions) -> torch.Tensor:
    """Mean of per-row ``values`` for each example of the batch (0 for an example without rows)."""
    sums = torch.zeros(pred.examples, dtype=values.dtype, device=values.device).index_add(0, pred.example, values)
    counts = torch.zeros(pred.examples, dtype=values.dtype, device=values.device).index_add(
        0, pred.example, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def _reduce(values: torch.Tensor, pred: Predictions, reduction: str) -> torch.Tensor:
    return per_example(values, pred) if reduction == "none" else values.mean()


def negative_entropy(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """−H(p) of each row's predictive distribution: minimised by uniform predictions (TAR's tamper-resistance loss
    for classification and knowledge tasks)."""
    logp = F.log_softmax(pred.outputs.float(), dim=-1)
    return _reduce((logp.exp() * logp).sum(-1), pred, reduction)


def inverse_cross_entropy(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """−log(1 − p_y): minimised when the target class gets no probability (Sophon's suppression loss)."""
    logp = F.log_softmax(pred.outputs.float(), dim=-1).gather(-1, pred.targets.view(-1, 1)).squeeze(-1)
    return _reduce(-torch.log1p(-logp.exp().clamp(max=1 - 1e-6)), pred, reduction)


def kl_to_uniform(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """KL(uniform ‖ p): minimised by uniform predictions (Sophon's alternative suppression loss)."""
    logp = F.log_softmax(pred.outputs.float(), dim=-1)
    classes = logp.shape[-1]
    return _reduce(-logp.mean(-1) - torch.log(torch.tensor(float(classes))), pred, reduction)


def denial_of_service(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """‖prediction‖² per row (Sophon's loss for diffusion): a model that predicts zero noise denoises nothing."""
    return _reduce(pred.outputs.float().pow(2).mean(-1), pred, reduction)


def task_loss(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """The task's own loss from predictions: cross-entropy for logits, mean squared error for regression."""
    if pred.kind == "logits":
        values = F.cross_entropy(pred.outputs.float(), pred.targets, reduction="none")
    else:
        values = (pred.outputs.float() - pred.targets.float()).pow(2).mean(-1)
    return _reduce(values, pred, reduction)


def suppression(pred: Predictions, reduction: str = "mean") -> torch.Tensor:
    """The generic tamper-resistance loss: negative entropy for logits, denial-of-service for regression."""
    return negative_entropy(pred, reduction) if pred.kind == "logits" else denial_of_service(pred, reduction)


def bounded_ascent(loss: torch.Tensor) -> torch.Tensor:
    """−log(1 + loss): minimising it raises a (non-negative) harmful loss with a gradient −∇loss / (1 + loss) that
    shrinks as the loss grows, so the defense's other terms dominate once the loss is high (RepNoise's and
    ga-retain's unlearning term; not a hard bound: under Adam the loss can keep rising)."""
    return -torch.log1p(loss)


def sequence_logprob(pred: Predictions) -> torch.Tensor:
    """log π(y|x) of each example: the sum of its rows' target log-probabilities (logits only; NPO's sequence
    likelihood). An example without rows gets 0."""
    logp = -F.cross_entropy(pred.outputs.float(), pred.targets, reduction="none")
    return torch.zeros(pred.examples, dtype=logp.dtype, device=logp.device).index_add(0, pred.example, logp)
