"""The LLM unlearning defenses (RMU, NPO) and the attacks of their threat models (benign-ft, harmful-mix), on the
LLM tasks' cheap (smoke) tiny builds: rules, training on their own objectives, what they change, determinism, the
attackers' batches, the default suite, and ``npo+specdef`` through the runner."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from bench.config import build_config, config_to_dict
from bench.core.spec import make_spec
from bench.errors import ConfigError, PluginError
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.run.results import read_metrics
from bench.run.runner import run
from bench.run.stages import Session


@pytest.fixture(scope="module")
def tasks(cache):
    def build(name):
        cls = TASKS.get(name)
        return cls().build(cls.Config(**cls.smoke_args), tier="tiny", model=None, cache=cache,
                           device=torch.device("cpu"), progress=False)

    return {name: build(name) for name in ("llm-relearn", "llm-harmful-qa")}


def defend(task, name, seed=0, **args):
    cls = DEFENSES.get(name)
    return cls().apply(copy.deepcopy(task.model), task.defender_view(), cls.Config(**args),
                       generator=torch.Generator().manual_seed(seed))


def terms(result, name):
    return torch.tensor([point[name] for point in result.curve])


@pytest.mark.parametrize("name, bad", [("rmu", {"steer_scale": 0.0}), ("rmu", {"alpha": -1.0}),
                                       ("rmu", {"layer": -1}), ("rmu", {"trained_blocks": 0}),
                                       ("npo", {"beta": 0.0}), ("npo", {"retain_weight": -1.0})])
def test_configs_round_trip_and_reject_bad_values(name, bad):
    cls = DEFENSES.get(name).Config
    cfg = cls(steps=7, lr=3e-4)
    assert build_config(cls, config_to_dict(cfg), where=name) == cfg
    with pytest.raises(ConfigError):
        cls(**bad)
    assert DEFENSES.get(name).settings == {"chat", "knowledge"}


def test_rmu_steers_the_paper_layer_scaled_to_depth():
    from defenses.rmu import RMUConfig, steered_layer

    cfg = RMUConfig()
    # the paper's 7 of 32; about a quarter of the depth, at least 1, never past the last block
    assert [steered_layer(cfg, depth) for depth in (32, 30, 12, 4, 2, 1)] == [7, 7, 3, 1, 0, 0]  # 2: not the last
    assert steered_layer(RMUConfig(layer=5), 6) == 5
    with pytest.raises(PluginError, match="out of range"):
        steered_layer(RMUConfig(layer=6), 6)


def test_rmu_finds_the_mlp_output_maps_on_structure():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from defenses.rmu import mlp_output_map

    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert mlp_output_map(llama, "model.layers.1") == "model.layers.1.mlp.down_proj"
    assert mlp_output_map(gpt2, "transformer.h.0") == "transformer.h.0.mlp.c_proj"  # a Conv1D
    with pytest.raises(PluginError, match="no linear map"):
        mlp_output_map(llama, "model.norm")


@pytest.mark.parametrize("task_name", ["llm-relearn", "llm-harmful-qa"])
def test_rmu_trains_only_the_mlp_output_maps_toward_its_objective(tasks, task_name):
    task = tasks[task_name]
    # The smoke build's hidden states are small (norm ~0.12, a barely trained model), so the retain term is weighted
    # down for its forget term to move within a few steps (on the full tiny tier at the defaults, 150 steps: the
    # forget term falls 1.15 -> 0.39 on llm-relearn, 0.29 -> 0.017 on llm-harmful-qa).
    result = defend(task, "rmu", steps=30, lr=1e-2, alpha=1.0)
    forget, loss = terms(result, "forget_loss"), terms(result, "loss")
    assert forget[-5:].mean() < 0.7 * forget[:5].mean()  # measured: -45% (the harmful states move toward c·u)
    assert loss[-5:].mean() < 0.8 * loss[:5].mean()
    assert terms(result, "retain_loss")[0] == 0  # the benign states start where the released model had them
    info = result.info
    assert info["layer"] == 0 and info["steered_module"] == "model.layers.0"  # the smoke build has one block
    assert list(result.layers) == info["trained_maps"] == ["model.layers.0.mlp.down_proj"]
    assert info["steering_coefficient"] == pytest.approx(4.0 * info["hidden_norm"])
    released = dict(task.model.named_parameters())
    changed = {name for name, p in result.model.named_parameters() if not torch.equal(p, released[name])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    assert all(p.requires_grad for p in result.model.parameters())  # the attacker still trains every weight
    assert not result.model.training


def test_rmu_default_rules_on_the_tiny_tier(tasks):
    task = tasks["llm-relearn"]
    result = defend(task, "rmu", steps=2)
    scale = task.defender_view().attacker
    assert result.info["lr"] == min(scale.lrs) and result.info["batch_size"] == scale.batch_size
    assert defend(task, "rmu", steps_factor=1, max_steps=3).info["steps"] == 3


@pytest.mark.parametrize("name", ["rmu", "npo"])
def test_deterministic_under_a_seed(tasks, name):
    task = tasks["llm-relearn"]
    first, second, other = (defend(task, name, seed=s, steps=4, lr=1e-3) for s in (0, 0, 1))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert first.curve == second.curve and first.curve != other.curve


def test_sequence_logprob_is_the_per_example_loss_times_its_tokens(tasks):
    from defenses._objectives import sequence_logprob

    task = tasks["llm-harmful-qa"]
    view = task.defender_view()
    batch = view.harmful[0]
    with torch.no_grad():
        logp = sequence_logprob(view.predictions(task.model, batch))
        expected = -view.harmful_loss(task.model, batch, reduction="none") * batch.loss_mask.sum(dim=1)
    torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-4)


def test_npo_loss_starts_at_its_reference_value_and_falls_with_the_log_ratio():
    import math

    from defenses.npo import npo_loss

    ref = torch.tensor([-10.0, -20.0])
    assert npo_loss(ref, ref, 0.1).item() == pytest.approx(2 / 0.1 * math.log(2))
    assert npo_loss(ref - 50, ref, 0.1) < npo_loss(ref - 5, ref, 0.1) < npo_loss(ref, ref, 0.1)


@pytest.mark.parametrize("task_name", ["llm-relearn", "llm-harmful-qa"])
def test_npo_lowers_the_harmful_answers_relative_to_the_released_model(tasks, task_name):
    task = tasks[task_name]
    result = defend(task, "npo", steps=15, lr=1e-3)
    loss, ratio = terms(result, "npo_loss"), terms(result, "log_ratio")
    assert ratio[0] == 0 and loss[0].item() == pytest.approx(20 * 0.6931, rel=1e-3)  # (2/beta)·log 2 at the start
    assert loss[-3:].mean() < 0.5 * loss[0] and ratio[-3:].mean() < -5
    view = task.defender_view()
    with torch.no_grad():
        before = view.harmful_loss(task.model, view.harmful[0])
        after = view.harmful_loss(result.model, view.harmful[0])
    assert after > before
    assert all(p.requires_grad for p in result.model.parameters())


def test_mixed_batches_draw_benign_data_with_the_given_harmful_fraction(tasks):
    task = tasks["llm-harmful-qa"]
    attack = {item.ids for item in task.parts["attack"]}
    replay = {item.ids for item in task.parts["replay"]}

    def examples(fraction, seed=0, n=8):
        batches = itertools.islice(task.mixed_batches(16, torch.Generator().manual_seed(seed), fraction), n)
        return [tuple(ids[:m].tolist()) for b in batches for ids, m in zip(b.input_ids, b.attention_mask.sum(1))]

    assert set(examples(0.0)) <= replay
    assert set(examples(1.0)) <= attack
    mixed = examples(0.25, n=20)
    share = sum(e in attack for e in mixed) / len(mixed)
    assert 0.15 < share < 0.35 and set(mixed) <= attack | replay
    assert examples(0.25, seed=3) == examples(0.25, seed=3) != examples(0.25, seed=4)
    with pytest.raises(ConfigError, match="harmful_fraction"):
        task.mixed_batches(16, torch.Generator(), 1.5)


def test_harmful_mix_validates_its_poison_ratio():
    cls = ATTACKS.get("harmful-mix")
    assert cls.Config().poison_ratio == 0.1
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="poison_ratio"):
            cls.Config(poison_ratio=bad)


def test_the_llm_suite_has_one_learning_rate_for_each_new_attack():
    for task in ("llm-harmful-qa", "llm-relearn"):
        cls = TASKS.get(task)
        sweeps = {sweep.attack: sweep for sweep in cls().default_attacks(cls.Config(), "tiny")}
        for attack in ("benign-ft", "harmful-mix"):
            assert len(sweeps[attack].lrs) == 1 and not sweeps[attack].refine


def test_npo_then_specdef_runs_on_the_relearning_task(tmp_path, cache):
    smoke = {**TASKS.get("llm-relearn").smoke_args, "curvature_iters": 0, "bootstrap": 0}
    spec = make_spec(task="llm-relearn", defense="npo+specdef", attack="full-ft", task_args=smoke,
                     attack_args={"budget": 6, "eval_every": 3}, defense_args={"npo.steps": 3, "npo.lr": 1e-3})
    result = run(spec, Session(tmp_path, cache, progress=False))
    assert result.status == "success", result.error
    assert result.summary.outcome in ("harmed", "broken", "resisted")
    rows = read_metrics(tmp_path).to_pandas()
    curve = rows[rows["phase"] == "defense"]
    assert {"npo/npo_loss", "npo/retain_loss", "npo/log_ratio"} <= set(curve["metric"])
    assert sorted(set(curve["step"])) == [1, 2, 3]
