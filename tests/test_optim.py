"""Optimizers and training-loop options shared by the attacks: Muon, AdaHessian, clipping, warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks._optim import AdaHessian, OptimizerPair, build_optimizer, clip_gradients, warmup_scale
from bench.core.spec import make_spec
from bench.run.runner import run
from bench.run.stages import Session


def regression_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g)
    y = x @ torch.randn(8, 3, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)), x, y


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("adam", 1e-2), ("adamw", 1e-2), ("muon", 5e-2), ("adahessian", 0.1)])
def test_every_optimizer_reduces_a_loss_deterministically(name, lr):
    finals = []
    for _ in range(2):
        model, x, y = regression_problem()
        params = list(model.parameters())
        opt = build_optimizer(name, params, lr=lr, generator=torch.Generator().manual_seed(0))
        start = nn.functional.mse_loss(model(x), y).item()
        for _ in range(60):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            if getattr(opt, "needs_create_graph", False):
                for p, grad in zip(params, torch.autograd.grad(loss, params, create_graph=True)):
                    p.grad = grad
            else:
                loss.backward()
            opt.step()
        finals.append(nn.functional.mse_loss(model(x), y).item())
    assert finals[0] < 0.5 * start
    assert finals[0] == finals[1]


def test_muon_takes_matrices_and_adamw_the_rest():
    model, _, _ = regression_problem()
    opt = build_optimizer("muon", model.parameters(), lr=1e-3)
    assert isinstance(opt, OptimizerPair)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert isinstance(adamw, torch.optim.AdamW) and all(p.ndim == 1 for g in adamw.param_groups for p in g["params"])


def test_adahessian_refuses_gradients_without_a_graph():
    model, x, y = regression_problem()
    opt = AdaHessian(model.parameters(), lr=0.1)
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()


def test_warmup_and_clipping_helpers():
    assert [warmup_scale(s, 4) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert warmup_scale(1, 0) == 1.0
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3.0)
    assert clip_gradients([p], 1.0) == pytest.approx(6.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_clipping_and_warmup_change_the_attack(tmp_path, cache):
    def steps(**kw):
        spec = make_spec(task="vision-digits", defense="none", attack="full-ft",
                         task_args={"curvature_iters": 0, "bootstrap": 0},
                         attack_args={"optimizer": "sgd", "lr": 0.3, "budget": 200, **kw})
        result = run(spec, Session(tmp_path, cache))
        assert result.status == "success"
        return result.summary.steps_to_harm

    plain = steps()
    assert steps(grad_clip=0.01) > plain  # tiny steps: slower to harm
    assert steps(warmup_steps=150) > plain


def test_cpu_muon_is_torchs_update_with_a_float32_orthogonalisation():
    from attacks._optim import CpuFloat32Muon, _newton_schulz_float32

    torch.manual_seed(0)
    weights = {name: nn.Parameter(torch.randn(48, 16)) for name in ("ours", "torch's")}
    ours = CpuFloat32Muon([weights["ours"]], lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    theirs = torch.optim.Muon([weights["torch's"]], lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    start = weights["ours"].detach().clone()
    weights["torch's"].data.copy_(start)
    for _ in range(3):
        grad = torch.randn(48, 16)
        for name, optimizer in (("ours", ours), ("torch's", theirs)):
            weights[name].grad = grad.clone()
            optimizer.step()
    moved = (weights["torch's"] - start).norm()
    assert (weights["ours"] - weights["torch's"]).norm() < 0.02 * moved  # the same update, up to bfloat16 rounding
    g = torch.randn(64, 32, dtype=torch.float64)
    exact = _newton_schulz_float32(g.double(), (3.4445, -4.775, 2.0315), 5, 1e-7).double()
    from torch.optim._muon import _zeropower_via_newtonschulz

    bf16 = _zeropower_via_newtonschulz(g.float(), (3.4445, -4.775, 2.0315), 5, 1e-7).double()
    f32 = _newton_schulz_float32(g.float(), (3.4445, -4.775, 2.0315), 5, 1e-7).double()
    assert (f32 - exact).abs().max() < (bf16 - exact).abs().max() / 10  # more precise, not another map
    built = build_optimizer("muon", [nn.Parameter(torch.randn(4, 4))], lr=1e-3)
    assert isinstance(built.optimizers[0], CpuFloat32Muon)
