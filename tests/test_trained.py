"""The loop every trained defense shares (defenses._trained.train_defense): same numbers as the per-defense loops it
replaced, a clear stop on a non-finite term, and the order of its hooks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench import testing
from bench.errors import TrainingDivergedError
from bench.registry import DEFENSES
from defenses._objectives import bounded_ascent
from defenses._trained import endless, train_defense


def test_ga_retain_through_the_shared_loop_is_bit_identical_to_the_loop_it_replaced():
    view, released = testing.tiny_view(), testing.tiny_mlp()
    cls = DEFENSES.get("ga-retain")
    cfg = cls.Config(steps=6, lr=1e-2, grad_clip=0.5)
    result = cls().apply(copy.deepcopy(released), view, cfg, generator=torch.Generator().manual_seed(3))

    # ga-retain's own loop before the shared one (issue 25), kept here as the reference.
    model, generator = copy.deepcopy(released), torch.Generator().manual_seed(3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    harmful, benign = endless(view, "harmful", 16, generator), endless(view, "benign", 16, generator)
    model.train()
    curve = []
    for step in range(1, cfg.steps + 1):
        benign_loss = view.benign_loss(model, next(benign))
        harmful_loss = view.harmful_loss(model, next(harmful))
        loss = benign_loss + cfg.alpha * bounded_ascent(harmful_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
        optimizer.step()
        curve.append({"step": float(step), "loss": float(loss.detach()), "benign_loss": float(benign_loss.detach()),
                      "harmful_loss": float(harmful_loss.detach())})

    for mine, reference in zip(result.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(mine, reference)
    assert [dict(point) for point in result.curve] == curve
    assert result.info["fb_passes"] == 12 and result.info["steps"] == 6 and not result.model.training
    assert result.layers == ("net.0", "net.2", "net.4")


def _quadratic_step(model: nn.Module, seen: list[str]):
    def step(i: int) -> dict[str, torch.Tensor]:
        seen.append(f"step {i}")
        loss = model(torch.ones(1, 2)).pow(2).sum()
        loss.backward()
        return {"loss": loss}
    return step


def test_a_non_finite_term_stops_training_naming_the_defense_the_step_and_the_term():
    model, seen = nn.Linear(2, 1), []
    ok = _quadratic_step(model, seen)

    def step(i: int) -> dict[str, torch.Tensor | float]:
        return {**ok(i), "ratio": math.nan if i == 3 else 1.0}

    cfg = DEFENSES.get("ga-retain").Config(steps=5, lr=1e-3)
    with pytest.raises(TrainingDivergedError, match=r"defense 'mine' diverged at training step 3: ratio = nan"):
        train_defense(model, testing.tiny_view(), cfg, step, name="mine", steps=5, passes=1)
    assert seen == ["step 1", "step 2", "step 3"]


def test_then_runs_after_the_optimizer_step_and_its_terms_join_the_steps():
    model, seen = nn.Linear(2, 1), []
    weights = []

    def then() -> dict[str, float]:
        seen.append("then")
        weights.append(model.weight.detach().clone())
        return {"after": float(model.weight.detach().sum())}

    cfg = DEFENSES.get("ga-retain").Config(steps=3, lr=0.1, grad_clip=0.0)
    start = model.weight.detach().clone()
    result = train_defense(model, testing.tiny_view(), cfg, _quadratic_step(model, seen), name="mine", steps=3,
                           passes=4, then=then, cosine=0.0, layers=["custom"], info={"extra": 1})
    assert seen == ["step 1", "then", "step 2", "then", "step 3", "then"]
    assert not torch.equal(weights[0], start)  # then() saw the weights the optimizer step had moved
    assert [set(point) for point in result.curve] == [{"step", "loss", "after"}] * 3
    assert result.info["fb_passes"] == 12 and result.info["extra"] == 1 and result.layers == ("custom",)
    # the cosine schedule decayed the learning rate: the last step moves the weights less than the first
    assert (weights[2] - weights[1]).abs().sum() < (weights[0] - start).abs().sum()
