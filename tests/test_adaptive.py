"""Adaptive attacks and LoRA: structure detection, function-preserving rewrites, parameter accounting, merging."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attacks._structure import collapse, find_chains, freeze_tail, inject, rewrite_checked, split_first
from attacks.lora import LoraConfig, resolve_targets
from bench.testing import tiny_view
from bench.toolkit.layers import MLP, FactoredLinear
from defenses.specdef import SpecDef, SpecDefConfig

X = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))


def defended_mlp(alpha=1e4, dtype="float64"):
    torch.manual_seed(0)
    released = MLP([16, 32, 32, 6]).eval()
    cfg = SpecDefConfig(alpha=alpha, k=5, dtype=dtype)
    model = SpecDef().apply(copy.deepcopy(released), tiny_view(), cfg, generator=torch.Generator().manual_seed(0)).model
    return released, model


def outputs(model):
    return model(X)


def test_specdef_chains_are_found_by_structure():
    _, model = defended_mlp()
    chains = find_chains(model, outputs)
    assert [c.path for c in chains] == ["net.0", "net.2", "net.4"] and all(c.factored for c in chains)


def test_collapse_recovers_the_released_weights_and_function():
    released, model = defended_mlp()
    for chain in find_chains(model, outputs):
        assert collapse(model, chain) < 0  # the compensation maps are gone
    for name in ("net.0", "net.2", "net.4"):
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear
        torch.testing.assert_close(layer.weight, released.get_submodule(name).weight, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(X), released(X), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in released.parameters())


def test_inject_is_the_identity_at_init_and_adds_one_square_layer_per_chain():
    _, model = defended_mlp()
    with torch.no_grad():
        before = model(X)
    chains = find_chains(model, outputs)
    added = [inject(model, c) for c in chains]
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-5)
    for chain, n_added in zip(chains, added):
        layer = model.get_submodule(chain.path)
        frozen, square = layer.factors
        m = frozen.out_features
        assert square.weight.shape == (m, m) and torch.equal(square.weight, torch.eye(m))
        assert not frozen.weight.requires_grad and square.weight.requires_grad and layer.bias.requires_grad
        # SpecDef's (W̃, C) chain held m*n + m*m + m; now the frozen fused map m*n, the square map m*m, bias m
        assert n_added == 0


def test_freeze_keeps_structure_and_freezes_compensation():
    _, model = defended_mlp()
    for chain in find_chains(model, outputs):
        freeze_tail(model, chain)
    for module in model.modules():
        if isinstance(module, FactoredLinear):
            assert module.factor("scaled").weight.requires_grad
            assert not module.factor("compensation").weight.requires_grad


@pytest.mark.parametrize("pieces", [2, 3])
def test_split_factors_multiply_back_to_the_inflated_map(pieces):
    _, model = defended_mlp()
    chain = find_chains(model, outputs)[1]
    inflated = model.get_submodule(chain.path).factor("scaled").weight.detach().clone()
    with torch.no_grad():
        before = model(X)
    split_first(model, chain, pieces)
    layer = model.get_submodule(chain.path)
    factors = [f.weight for f in layer.factors[:pieces]]
    product = factors[0].double()
    for f in factors[1:]:
        product = f.double() @ product
    torch.testing.assert_close(product, inflated.double(), rtol=1e-8, atol=1e-6)
    singular = [torch.linalg.svdvals(f.double()) for f in factors]
    torch.testing.assert_close(singular[0].max() ** pieces, torch.linalg.svdvals(inflated.double()).max(), rtol=1e-8, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-4)


class ThirdPartyReparam(nn.Module):
    """Someone else's defense: two plain linear maps in a Sequential, no harness layer."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        inner = nn.Linear(layer.in_features, layer.out_features, bias=False)
        outer = nn.Linear(layer.out_features, layer.out_features)
        with torch.no_grad():
            scale = torch.full((layer.out_features,), 100.0)
            inner.weight.copy_(scale[:, None] * layer.weight)
            outer.weight.copy_(torch.diag(1 / scale))
            outer.bias.copy_(layer.bias)
        self.pair = nn.Sequential(inner, outer)

    def forward(self, x):
        return self.pair(x)


class ReusesFirstOutput(nn.Module):
    """A wrapper whose first map's output is used twice: fusing it away would change the function."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + torch.relu(h)


def test_traced_chains_in_third_party_wrappers():
    torch.manual_seed(0)
    model = MLP([16, 32, 6]).eval()
    model.net[0] = ThirdPartyReparam(model.net[0])
    chains = find_chains(model, outputs)
    assert [c.members for c in chains] == [("net.0.pair.0", "net.0.pair.1")] and not chains[0].factored
    with torch.no_grad():
        before = model(X)
    added, done, skipped = rewrite_checked(model, chains, collapse, outputs)
    assert done and not skipped and added == -(32 * 32)
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-4, atol=1e-4)


def test_a_rewrite_that_changes_the_function_is_undone():
    torch.manual_seed(0)
    model = nn.Sequential(ReusesFirstOutput(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        before = model(X)
    chains = find_chains(model, outputs)
    assert chains  # the trace sees a -> b ...
    added, done, skipped = rewrite_checked(model, chains, collapse, outputs)
    assert not done and skipped and added == 0  # ... but fusing them would change the function
    with torch.no_grad():
        assert torch.equal(model(X), before)


def _one_by_one(model, chains, rewrite, outputs, rtol=1e-3):
    """The check as it was before it was batched: one forward per chain (the oracle the batched check must match)."""
    from bench.toolkit.layers import set_submodule
    with torch.no_grad():
        reference = outputs(model).double()
    scale = float(reference.abs().max().clamp_min(1e-12))
    added, done, skipped = 0, [], []
    for chain in chains:
        saved = {p: model.get_submodule(p) for p in (chain.members if not chain.factored else (chain.path,))}
        grads = {id(p): p.requires_grad for m in saved.values() for p in m.parameters()}
        delta = rewrite(model, chain)
        with torch.no_grad():
            current = outputs(model).double()
        if float((current - reference).abs().max()) <= rtol * scale:
            added += delta
            done.append(chain.describe())
            continue
        for path, module in saved.items():
            set_submodule(model, path, module)
            for p in module.parameters():
                p.requires_grad_(grads[id(p)])
        skipped.append(chain.describe())
    return added, done, skipped


def _mixed_model():
    """A chain that may be fused, one that may not (its first output is reused), and a SpecDef'd layer."""
    torch.manual_seed(1)
    _, model = defended_mlp(dtype="float32")
    return nn.Sequential(ThirdPartyReparam(nn.Linear(16, 16)), ReusesFirstOutput(), model).eval()


def _counted(fn):
    calls = []

    def wrapped(model):
        calls.append(1)
        return fn(model)
    return wrapped, calls


@pytest.mark.parametrize("make", [lambda: defended_mlp(dtype="float32")[1], _mixed_model], ids=["specdef", "mixed"])
@pytest.mark.parametrize("rewrite", [collapse, inject, freeze_tail, lambda m, c: split_first(m, c, 3)],
                         ids=["collapse", "inject", "freeze", "split"])
def test_the_batched_rewrite_check_matches_the_one_by_one_check_bit_for_bit(make, rewrite):
    models = [make(), make()]
    chains = find_chains(models[0], outputs)
    results, states = [], []
    for model, check in zip(models, (_one_by_one, rewrite_checked)):
        torch.manual_seed(7)  # building a layer draws from torch's random state: it must end where it would have
        counted, calls = _counted(outputs)
        results.append(check(model, chains, rewrite, counted, rtol=0.05))
        states.append((torch.get_rng_state(), len(calls)))
    assert results[0] == results[1]
    assert torch.equal(states[0][0], states[1][0])
    one_by_one, batched = (dict(m.named_parameters()) for m in models)
    assert list(one_by_one) == list(batched)
    for name, p in one_by_one.items():
        assert torch.equal(p, batched[name]) and p.requires_grad == batched[name].requires_grad, name
    with torch.no_grad():
        assert torch.equal(models[0](X), models[1](X))
    if not results[1][2]:  # every chain kept the function: one reference forward and one joint check
        assert states[1][1] == 2 < states[0][1]


def test_lora_targets_follow_the_factor_policy():
    _, model = defended_mlp()
    standard = ("net.*",)
    first = resolve_targets(model, LoraConfig(factors="first"), standard)
    both = resolve_targets(model, LoraConfig(factors="both"), standard)
    comp = resolve_targets(model, LoraConfig(targets="all-linear", factors="compensation"), standard)
    assert first == ["net.0.factors.0", "net.2.factors.0", "net.4.factors.0"]
    assert len(both) == 6 and set(comp) == {"net.0.factors.1", "net.2.factors.1", "net.4.factors.1"}
    plain = MLP([16, 32, 6])
    assert resolve_targets(plain, LoraConfig(), standard) == ["net.0", "net.2"]
    with pytest.raises(Exception, match="matches no layer"):
        resolve_targets(plain, LoraConfig(targets="conv-only"), standard)


def test_lora_merge_matches_the_adapter_model():
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    _, model = defended_mlp(dtype="model")
    names = resolve_targets(model, LoraConfig(), ("net.*",))
    inject_adapter_in_model(PeftLoraConfig(r=4, lora_alpha=8, target_modules=names), model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained-looking adapter (B starts at zero)
        adapted = model(X)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.merge()
        merged = model(X)
    # float32 merges into W̃, whose entries are ~alpha times larger than W's: rounding is ~alpha · eps ≈ 6e-4
    torch.testing.assert_close(merged, adapted, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("attack, rewritten", [("adaptive-collapse", 3), ("adaptive-inject", 3), ("adaptive-freeze", 3),
                                               ("adaptive-split", 3)])
def test_adaptive_attacks_record_what_they_found(attack, rewritten, tmp_path, cache):
    import pyarrow.parquet as pq

    from bench.core.spec import make_spec
    from bench.run.runner import run
    from bench.run.stages import Session

    session = Session(tmp_path, cache)
    for defense, expected in (("specdef", rewritten), ("none", 0)):
        spec = make_spec(task="vision-digits", defense=defense, attack=attack,
                         task_args={"curvature_iters": 0, "bootstrap": 0}, attack_args={"budget": 5})
        result = run(spec, session)
        info = result.summary.attack_info
        assert result.status == "success" and info["chains_rewritten"] == expected
        assert info["fallback"] == (expected == 0)  # no chains: plain fine-tuning, and the run says so
        df = pq.read_table(tmp_path / spec.run_id / "metrics.parquet").to_pandas()
        assert df[df["metric"] == "attack_chains_found"]["value"].iloc[0] == expected
        assert set(df["knowledge"]) == {"white-box"}
