"""The LLM tasks' defender view: per-example losses, the aligned split, streams, features, predictions, attacker scale.

Both tasks on their cheap (smoke) tiny builds; every check is a behaviour a trained defense relies on.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from bench.contracts import AttackerScale
from bench.errors import PluginError
from bench.registry import TASKS
from bench.toolkit.features import transformer_blocks
from tasks.llm import harmful_qa, prompts, relearn
from tasks.llm.instance import DEFENDER_PARTS
from tasks.llm.judge import KeywordJudge
from tasks.llm.relearn import TINY_NON_ANSWER

TASK_NAMES = ("llm-harmful-qa", "llm-relearn")


@pytest.fixture(scope="module")
def tasks(cache):
    return {name: TASKS.get(name)().build(TASKS.get(name).Config(**TASKS.get(name).smoke_args), tier="tiny",
                                          model=None, cache=cache, device=torch.device("cpu"), progress=False)
            for name in TASK_NAMES}


def rows(batch) -> list[tuple[int, ...]]:
    """The unpadded token ids of each example of a batch."""
    return [tuple(ids[:n].tolist()) for ids, n in zip(batch.input_ids, batch.attention_mask.sum(dim=1))]


def prompt_ids(batch) -> list[tuple[int, ...]]:
    """The ids before each example's first scored token (its prompt)."""
    starts = batch.loss_mask.argmax(dim=1) + 1
    return [tuple(ids[:s].tolist()) for ids, s in zip(batch.input_ids, starts)]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_per_example_losses_weighted_by_response_tokens_give_the_mean_loss(tasks, name):
    task = tasks[name]
    view = task.defender_view()
    with torch.no_grad():
        for part, key in DEFENDER_PARTS.items():
            loss = getattr(view, f"{part}_loss")
            batch = getattr(view, part)[0]
            per_example = loss(task.model, batch, reduction="none")
            tokens = batch.loss_mask.sum(dim=1)
            assert per_example.shape == (len(batch),) and (per_example > 0).all()
            weighted = (per_example * tokens).sum() / tokens.sum()
            assert weighted.item() == pytest.approx(loss(task.model, batch).item(), rel=1e-5)
            # each value is that example's own loss: the same as in a batch of its own (padding changes nothing)
            alone = loss(task.model, task.batch([task.parts[key][1]]))
            assert per_example[1].item() == pytest.approx(alone.item(), rel=1e-4)
        with pytest.raises(ValueError, match="reduction"):
            view.harmful_loss(task.model, view.harmful[0], reduction="sum")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_aligned_items_share_the_harmful_prompts_with_a_safe_target(tasks, name):
    task = tasks[name]
    view = task.defender_view()
    assert len(view.aligned) == len(view.harmful)
    for harmful, aligned in zip(view.harmful, view.aligned):
        assert len(harmful) == len(aligned)
        for h, a, a_prompt in zip(rows(harmful), rows(aligned), prompt_ids(aligned)):
            assert h[:len(a_prompt)] == a_prompt and h != a  # same inputs, different target
    texts = [task.tokenizer.decode(list(item.ids[item.prompt_len:]), skip_special_tokens=True).strip()
             for item in task.parts["defender_aligned"]]
    if name == "llm-harmful-qa":
        defender = task.harmful.defender
        assert texts == [prompts.refusal_response(i.prompt) for i in defender]  # what the released model was taught
        assert not KeywordJudge().complied([i.prompt for i in defender], texts).any()
    else:
        assert texts == [TINY_NON_ANSWER] * len(texts)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_streams_are_deterministic_shuffled_and_drawn_from_the_defender_split_only(tasks, name):
    task = tasks[name]
    view = task.defender_view()
    for part, key in DEFENDER_PARTS.items():
        allowed = {item.ids for item in task.parts[key]}
        first, again = (list(itertools.islice(view.stream(part, 4, torch.Generator().manual_seed(7)), 6))
                        for _ in range(2))
        assert [rows(b) for b in first] == [rows(b) for b in again]
        assert all(len(b) == min(4, len(allowed)) and set(rows(b)) <= allowed for b in first)
    benign = [rows(b) for b in itertools.islice(view.stream("benign", 4, torch.Generator().manual_seed(7)), 6)]
    other = [rows(b) for b in itertools.islice(view.stream("benign", 4, torch.Generator().manual_seed(8)), 6)]
    assert benign != other
    for harmful, aligned in itertools.islice(view.stream("pairs", 2, torch.Generator().manual_seed(0)), 4):
        assert [h[:len(p)] for h, p in zip(rows(harmful), prompt_ids(aligned))] == prompt_ids(aligned)
    with pytest.raises(PluginError, match="no defender stream 'attack'"):
        view.stream("attack", 4, torch.Generator())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_features_are_decoder_block_states_at_response_tokens_with_gradients(tasks, name):
    task = tasks[name]
    view = task.defender_view()
    layers = task.model.config.num_hidden_layers
    assert view.feature_modules == tuple(f"model.layers.{i}" for i in range(layers))
    batch = view.harmful[0]
    features = view.features(task.model, batch)
    assert list(features) == list(view.feature_modules)
    for hidden in features.values():
        assert hidden.shape == (int(batch.loss_mask.sum()), task.model.config.hidden_size)
    task.model.zero_grad(set_to_none=True)
    sum(h.pow(2).sum() for h in features.values()).backward()
    grad = task.model.model.layers[0].self_attn.q_proj.weight.grad
    task.model.zero_grad(set_to_none=True)
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", TASK_NAMES)
def test_predictions_cross_entropy_is_the_harmful_loss(tasks, name):
    task = tasks[name]
    view = task.defender_view()
    batch = view.harmful[0]
    with torch.no_grad():
        pred = view.predictions(task.model, batch)
        assert pred.kind == "logits" and pred.examples == len(batch)
        assert pred.outputs.shape == (int(batch.loss_mask.sum()), task.model.config.vocab_size)
        nll = F.cross_entropy(pred.outputs, pred.targets, reduction="none")
        assert nll.mean().item() == pytest.approx(view.harmful_loss(task.model, batch).item(), rel=1e-5)
        per_example = torch.zeros(len(batch)).index_add_(0, pred.example, nll) / torch.bincount(pred.example)
        torch.testing.assert_close(per_example, view.harmful_loss(task.model, batch, reduction="none"))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_attacker_scale_is_the_tiny_tiers_measured_one(tasks, name):
    module = harmful_qa if name == "llm-harmful-qa" else relearn
    expected = AttackerScale(steps=module.TINY_STEPS_TO_HARM, lrs=module.TINY_ATTACK_LRS,
                             batch_size=tasks[name].config.batch_size)
    assert tasks[name].defender_view().attacker == expected and expected.steps > 0 and expected.lrs


def test_transformer_blocks_are_found_on_structure():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert transformer_blocks(gpt2) == ("transformer.h.0", "transformer.h.1", "transformer.h.2")
    assert transformer_blocks(torch.nn.Linear(2, 2)) == ()
