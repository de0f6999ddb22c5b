"""SpecDef: function preservation, spectral inflation, top-k SVD accuracy, layer selection, save/reload."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.modelio import load_model, read_manifest, save_model
from bench.testing import tiny_view
from bench.toolkit.layers import MLP, FactoredLinear
from defenses._selection import select_layers
from defenses._spectral import VALUE_TOL, _subspace_iteration, principal_angle, specdef_maps, top_k_left_singular
from defenses.specdef import SpecDef, SpecDefConfig, compensated_linear
from defenses.specdef_nocomp import SpecDefNoCompConfig, SpecDefNoCompensation
from tasks.vision.task import VisionConfig, VisionDigits


@pytest.fixture(scope="module")
def digits(cache):
    return VisionDigits().build(VisionConfig(), tier="tiny", model=None, cache=cache, device=torch.device("cpu"))


def defend(model, cfg=None, seed=0, cls=SpecDef):
    return cls().apply(copy.deepcopy(model), tiny_view(), cfg if cfg is not None else SpecDefConfig(), generator=torch.Generator().manual_seed(seed)).model


def decaying_weight(m=64, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.tensor([1.0 / (i + 1) ** 0.7 for i in range(min(m, n))], dtype=torch.float64)
    return u[:, : len(s)] @ torch.diag(s) @ v[:, : len(s)].T


def test_preserves_digits_logits_at_alpha_1e4(digits):
    x = digits.splits["eval_benign"].x
    defended = defend(digits.model)
    with torch.no_grad():
        before, after = digits.model(x), defended(x)
    assert (before - after).abs().max() < 0.1  # measured ≈ 0.014 in float32
    assert torch.equal(before.argmax(-1), after.argmax(-1))
    assert all(isinstance(m, FactoredLinear) for m in defended.net if not isinstance(m, nn.ReLU))


def test_large_alpha_warns_in_float32_and_float64_preserves(digits):
    x = digits.splits["eval_benign"].x
    with pytest.warns(UserWarning, match="dtype=float64"):
        defend(digits.model, SpecDefConfig(alpha=1e6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        defended = defend(digits.model, SpecDefConfig(alpha=1e6, dtype="float64"))
    with torch.no_grad():
        assert (digits.model(x) - defended(x)).abs().max() < 1e-4
    assert defended(x).dtype == torch.float32  # float64 storage does not leak into the model's outputs


def test_inflates_exactly_the_top_k_singular_values():
    weight = decaying_weight().float()
    layer = nn.Linear(48, 64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    cfg = SpecDefConfig(alpha=100.0, k=5, dtype="float64")
    info = {}
    fused = compensated_linear(layer.weight, layer.bias, cfg, generator=torch.Generator().manual_seed(0), info=info)
    scaled, comp = fused.factor("scaled").weight, fused.factor("compensation").weight
    s_before = torch.linalg.svdvals(layer.weight.double())
    s_after = torch.linalg.svdvals(scaled)
    expected = torch.cat([s_before[:5] * 100.0, s_before[5:]]).sort(descending=True).values
    torch.testing.assert_close(s_after, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(comp @ scaled, layer.weight.double(), rtol=0, atol=1e-12)
    assert info["reconstruction_error"] < 1e-12
    assert comp.requires_grad  # the paper's setting: C is trainable


def test_compensation_can_be_frozen(digits):
    defended = defend(digits.model, SpecDefConfig(trainable_compensation=False))
    comps = [m.factor("compensation").weight for m in defended.modules() if isinstance(m, FactoredLinear)]
    assert comps and not any(w.requires_grad for w in comps)


@pytest.mark.parametrize("spectrum", ["flat", "decaying"])
@pytest.mark.parametrize("tol, max_angle, sigma_rtol", [(1e-5, 1e-3, 1e-6), (1e-9, 1e-6, 1e-12)])
def test_topk_subspace_matches_exact_svd(spectrum, tol, max_angle, sigma_rtol):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 200, generator=g, dtype=torch.float64) if spectrum == "flat" else decaying_weight(300, 200)
    top = top_k_left_singular(weight, 25, method="topk", tol=tol, generator=g)
    u, s, _ = torch.linalg.svd(weight, full_matrices=False)
    assert top.residual <= tol
    assert principal_angle(top.u, u[:, :25]) < max_angle
    torch.testing.assert_close(top.s, s[:25], rtol=sigma_rtol, atol=0)
    # U_k is orthonormal to float64 precision, so C W̃ = W exactly whatever the tolerance
    inflated, comp = specdef_maps(weight, top.u, alpha=1e4)
    torch.testing.assert_close(comp @ inflated, weight, rtol=0, atol=1e-10)


def test_auto_on_a_flat_spectrum_converges_or_settles_for_converged_singular_values():
    # A Gaussian matrix (flat spectrum): the oversampled iteration converges, vectors included.
    weight = torch.randn(1000, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top = top_k_left_singular(weight, 25, method="auto", generator=torch.Generator().manual_seed(0))
    u, s, _ = torch.linalg.svd(weight)
    assert top.method == "topk" and top.residual <= 1e-5 and principal_angle(top.u, u[:, :25]) < 1e-3
    # With a budget the vectors cannot meet, auto stops once the values (what SpecDef inflates) have converged
    # instead of paying for an exact SVD, and says so.
    rough = _subspace_iteration(weight, 25, tol=1e-5, max_iter=30, generator=torch.Generator().manual_seed(0),
                                value_tol=VALUE_TOL)
    assert rough.method == "topk-values" and rough.iterations < 30 and rough.residual > 1e-5
    torch.testing.assert_close(rough.s, s[:25], rtol=VALUE_TOL, atol=0)
    assert top_k_left_singular(decaying_weight(700, 700), 25, method="auto").method == "topk"


def test_few_power_iterations_would_pick_wrong_directions_on_a_flat_spectrum():
    # Guards the reason for the convergence test: a fixed small iteration count is not enough.
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 200, generator=g, dtype=torch.float64)
    rough = top_k_left_singular(weight, 25, method="topk", max_iter=2, generator=g)
    u, _, _ = torch.linalg.svd(weight, full_matrices=False)
    assert principal_angle(rough.u, u[:, :25]) > 0.1
    assert rough.residual > 1e-6  # ... and the residual says so


def test_maps_compose_to_the_original_for_any_orthonormal_basis():
    weight = decaying_weight()
    q, _ = torch.linalg.qr(torch.randn(64, 7, dtype=torch.float64))
    inflated, comp = specdef_maps(weight, q, alpha=1e4)
    torch.testing.assert_close(comp @ inflated, weight, rtol=0, atol=1e-10)


def test_layer_selection():
    model = MLP([8, 16, 16, 4])
    assert select_layers(model, patterns=["*"], module_types=["Linear"]) == ["net.0", "net.2", "net.4"]
    assert select_layers(model, patterns=["net.4"], module_types=["Linear"]) == ["net.4"]
    assert select_layers(model, patterns=["*"], module_types=["Linear"], exclude=["net.0"]) == ["net.2", "net.4"]
    first = select_layers(model, patterns=["*"], module_types=["Linear"], count=2, generator=torch.Generator().manual_seed(1))
    again = select_layers(model, patterns=["*"], module_types=["Linear"], count=2, generator=torch.Generator().manual_seed(1))
    assert first == again and len(first) == 2
    with pytest.raises(ConfigError, match="no layer matches.*module types in this model"):
        select_layers(model, patterns=["*.q_proj"], module_types=["Linear"])


def test_defended_model_saves_and_reloads(digits, tmp_path):
    defended = defend(digits.model, SpecDefConfig(n_layers=2))
    directory = save_model(defended, tmp_path / "defended", architecture=digits.architecture())
    manifest = read_manifest(directory)
    assert len(manifest["structure"]) == 2 and manifest["structure"][0]["roles"] == ["scaled", "compensation"]
    reloaded = load_model(directory)
    x = digits.splits["eval_benign"].x
    with torch.no_grad():
        assert torch.equal(reloaded(x), defended(x))
    assert (tmp_path / "defended" / "model.safetensors").exists()


def test_nocomp_ablation_changes_the_outputs(digits):
    x = digits.splits["eval_benign"].x
    ablated = defend(digits.model, SpecDefNoCompConfig(alpha=1e4), cls=SpecDefNoCompensation)
    with torch.no_grad():
        before, after = digits.model(x), ablated(x)
    # Logits grow by orders of magnitude (confidences and losses change); on a ReLU MLP the argmax can survive,
    # because ReLU is positively homogeneous and the inflated top directions dominate.
    assert after.abs().max() > 1e3 * before.abs().max()


def test_nocomp_config_has_only_the_fields_it_uses():
    from bench.core.spec import make_spec

    # dtype and trainable_compensation do nothing without a compensation map: accepting them would give one model
    # several run ids (and several leaderboard rows)
    for key, value in (("dtype", "float64"), ("trainable_compensation", "false")):
        with pytest.raises(ConfigError, match=f"unknown config key {key!r}"):
            make_spec(task="vision-digits", defense="specdef-nocomp", attack="full-ft", defense_args={key: value})
    spec = make_spec(task="vision-digits", defense="specdef-nocomp", attack="full-ft", defense_args={"alpha": 100})
    assert set(spec.defense.kwargs) == {"alpha", "k", "layers", "module_types", "exclude", "n_layers", "svd"}


def test_transformers_conv1d_is_defended_as_the_linear_map_it_is():
    from transformers.pytorch_utils import Conv1D

    from bench.registry import DEFENSES

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(24, 16), nn.ReLU(), Conv1D(8, 24))  # GPT-2 layout: weight is (in, out)
    x = torch.randn(5, 16)
    with torch.no_grad():
        reference = model(x)
    defended = copy.deepcopy(model)
    result = DEFENSES.get("specdef")().apply(defended, None, SpecDefConfig(alpha=100.0, k=4, dtype="float64"),
                                             generator=torch.Generator().manual_seed(0))
    assert result.layers == ["0", "2"]
    with torch.no_grad():
        torch.testing.assert_close(defended(x).float(), reference, rtol=0, atol=1e-5)
        scaled = defended[0].factors[0].weight.double()
        s_before = torch.linalg.svdvals(model[0].weight.t().double())
        torch.testing.assert_close(torch.linalg.svdvals(scaled)[:4], 100 * s_before[:4])
    ablated = copy.deepcopy(model)
    DEFENSES.get("specdef-nocomp")().apply(ablated, None, SpecDefNoCompConfig(alpha=100.0, k=4),
                                           generator=torch.Generator().manual_seed(0))
    assert isinstance(ablated[0], Conv1D)  # modified in place, still a Conv1D
    with torch.no_grad():
        torch.testing.assert_close(torch.linalg.svdvals(ablated[0].weight.t().double())[:4], 100 * s_before[:4],
                                   rtol=1e-4, atol=1e-4)


def _factored(n=16, m=48, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Linear(n, m, bias=False, dtype=dtype), nn.Linear(m, m, bias=False, dtype=dtype)
    with torch.no_grad():
        first.weight.copy_(torch.randn(m, n, generator=g, dtype=dtype))
        second.weight.copy_(torch.randn(m, m, generator=g, dtype=dtype))
    return FactoredLinear([first, second], torch.randn(m, generator=g, dtype=dtype), roles=("scaled", "compensation"))


def _output_and_grads(layer, x):
    layer.zero_grad()
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
    return y.detach(), [p.grad.clone() for p in layer.parameters()]


def test_factored_forward_multiplies_the_factors_first_only_when_cheaper_and_trains_every_factor(monkeypatch):
    layer = _factored()
    many, few = torch.randn(4, 50, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    assert layer._product_first(many) and not layer._product_first(few)  # 200 rows > 16 inputs; 3 rows < 16
    fast = _output_and_grads(layer, many)
    monkeypatch.setattr(FactoredLinear, "_product_first", lambda self, x: False)
    slow = _output_and_grads(layer, many)
    for a, b in zip([fast[0], *fast[1]], [slow[0], *slow[1]]):  # the same map and the same gradient for each factor
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_factored_forward_runs_a_hooked_or_wrapped_factor_itself():
    layer = _factored()
    x = torch.randn(200, 16, dtype=torch.float64)
    plain = layer(x)
    layer.factors[1].register_forward_hook(lambda module, inputs, output: output * 2)  # e.g. an adapter's extra term
    assert not layer._product_first(x)
    torch.testing.assert_close(layer(x), 2 * (plain - layer.bias) + layer.bias)


def test_presets_name_every_linear_map_and_the_papers_five_layers():
    from pathlib import Path

    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.core.spec import make_spec
    from bench.registry import DEFENSES

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    linear = [name for name, module in llama.named_modules() if isinstance(module, nn.Linear)]
    changed = {}
    for preset in ("all-linear", "paper-5-layers"):
        resolved = DEFENSES.resolve(f"specdef.{preset}")
        cfg = SpecDefConfig(**resolved.preset_args)
        assert (cfg.alpha, cfg.k) == (1e4, 25)
        result = SpecDef().apply(copy.deepcopy(llama), None, cfg, generator=torch.Generator().manual_seed(0))
        changed[preset] = result.layers
        # The preset's name is the row's label: the leaderboard says which setting each row is.
        spec = make_spec(task="vision-digits", defense=f"specdef.{preset}", attack="full-ft")
        assert spec.defense_label == f"specdef.{preset}"
    assert list(changed["all-linear"]) == linear and len(linear) == 15
    assert len(changed["paper-5-layers"]) == 5 and set(changed["paper-5-layers"]) < set(linear)
    # The leaderboard sweep runs both, and the ledger's setting says which row is the paper's.
    root = Path(__file__).resolve().parents[1]
    sweep = yaml.safe_load((root / "experiments/sweeps/leaderboard-tiny.yaml").read_text())
    setting = yaml.safe_load((root / "leaderboard/claims/specdef.yaml").read_text())["setting"]
    for name in (d for d in sweep["defenses"] if str(d).startswith("specdef.")):
        assert name in setting
    assert "specdef.paper-5-layers" in sweep["defenses"] and "about 5 random layers" in setting
