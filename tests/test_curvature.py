"""The curvature diagnostic on quadratic models whose Hessian is known: which eigenvalue, caps, determinism, dtype."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.config import build_config
from bench.contracts import TaskConfig
from bench.errors import ConfigError
from bench.run.curvature import top_hessian_eigenvalue


class Quadratic(nn.Module):
    """loss = ½ θᵀAθ + bᵀθ over θ split into two parameters of different shapes: the Hessian is A everywhere."""

    def __init__(self, eigenvalues, seed: int = 0, dtype=torch.float64):
        super().__init__()
        n = len(eigenvalues)
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        self.register_buffer("a", (q * torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.register_buffer("b", torch.randn(n, generator=generator, dtype=torch.float64))
        self.first = nn.Parameter(torch.randn(2, generator=generator, dtype=torch.float64).to(dtype))
        self.rest = nn.Parameter(torch.randn(n - 2, generator=generator, dtype=torch.float64).to(dtype))

    def forward(self) -> torch.Tensor:
        theta = torch.cat([self.first, self.rest]).double()
        return 0.5 * theta @ self.a @ theta + self.b @ theta


def loss(model: nn.Module) -> torch.Tensor:
    return model()


def spread(n: int) -> list[float]:
    """n distinct eigenvalues in [-10, 4]: the largest-magnitude one (-10) is negative, the largest is 4."""
    return torch.linspace(-10.0, 4.0, n).tolist()


def test_reports_the_largest_eigenvalue_not_the_largest_in_magnitude():
    model = Quadratic([-10.0, -3.0, 0.5, 2.0, 4.0])
    eigen = top_hessian_eigenvalue(model, loss, iters=30)
    assert eigen.value == pytest.approx(4.0, rel=1e-6)
    assert eigen.converged and eigen.iterations <= 6  # a 5-dimensional Krylov space is the whole space
    assert eigen.seconds > 0


def test_converges_on_a_larger_spectrum_and_never_overshoots():
    model = Quadratic(spread(200))
    eigen = top_hessian_eigenvalue(model, loss, iters=100, tol=1e-6)
    assert eigen.converged and eigen.iterations < 100
    assert eigen.value == pytest.approx(4.0, rel=1e-4)
    early = top_hessian_eigenvalue(model, loss, iters=4)
    assert not early.converged and early.iterations == 4
    assert early.value <= 4.0 + 1e-9  # a Ritz value is a lower bound of the largest eigenvalue


def test_the_time_cap_stops_after_the_step_that_exceeds_it():
    model = Quadratic(spread(200))
    eigen = top_hessian_eigenvalue(model, loss, iters=30, seconds=0.0)
    assert eigen.iterations == 1 and not eigen.converged and math.isfinite(eigen.value)


def test_same_seed_same_value_other_seed_other_start():
    model = Quadratic(spread(200))
    first = top_hessian_eigenvalue(model, loss, iters=5, seed=3)
    again = top_hessian_eigenvalue(model, loss, iters=5, seed=3)
    other = top_hessian_eigenvalue(model, loss, iters=5, seed=4)
    assert (first.value, first.iterations) == (again.value, again.iterations)
    assert other.value != first.value


def test_vectors_stay_in_the_parameters_dtype(monkeypatch):
    model = Quadratic([-10.0, -3.0, 0.5, 2.0, 4.0], dtype=torch.bfloat16)
    seen = []
    grad = torch.autograd.grad

    def recording(outputs, inputs, grad_outputs=None, **kwargs):
        if grad_outputs is not None:
            seen.extend(v.dtype for v in grad_outputs)
        return grad(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording)
    eigen = top_hessian_eigenvalue(model, loss, iters=5)
    assert seen and set(seen) == {torch.bfloat16}
    assert eigen.value == pytest.approx(4.0, rel=0.05)  # bfloat16 parameters: about two significant digits
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_nothing_to_measure_is_nan_with_no_steps():
    model = Quadratic([1.0, 2.0, 3.0])
    for p in model.parameters():
        p.requires_grad_(False)
    eigen = top_hessian_eigenvalue(model, loss)
    assert math.isnan(eigen.value) and eigen.iterations == 0 and not eigen.converged


@pytest.mark.parametrize("key, value, fragment", [
    ("curvature_seconds", 0, "curvature_seconds must be positive"),
    ("curvature_tol", 1.5, "curvature_tol must be in"),
    ("curvature_iters", -1, "curvature_iters must be >= 0"),
])
def test_bad_curvature_settings_are_clear_errors(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(TaskConfig, {key: value}, where="task")
