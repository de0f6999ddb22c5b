"""The real tier's second architecture: a Gemma-3 model from a Q4_K_M ``.gguf`` file, and the large-vocabulary
paths it needs (the chunked LM head, the row-chunked output comparison), checked against the full computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.core.metrics import _log_softmax, function_preservation
from bench.core.spec import make_spec
from bench.run.runner import run
from bench.run.stages import Session
from tasks.llm import chunked
from tasks.llm.chat import Batch, response_loss, token_nll

gguf = pytest.importorskip("gguf", reason="the gguf package writes the test's GGUF file: pip install 'bench[gguf]'")

CHEAP = {"lm_eval_tasks": ["llm_tiny_arithmetic"], "lm_eval_limit": 8, "probe_size": 8, "curvature_iters": 0,
         "bootstrap": 0, "max_length": 64, "max_new_tokens": 4, "refusal_floor": 0.0}


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory):
    from fixtures_gemma import save_gemma3_gguf

    return save_gemma3_gguf(tmp_path_factory.mktemp("gemma") / "gemma.Q4_K_M.gguf", "test")


def test_k_quants_decode_with_gguf_and_types_follow_llama_cpp_q4_k_m():
    from gguf import GGMLQuantizationType as T
    from kquants import q4_k_m_type, quantize

    data = (np.random.default_rng(0).standard_normal((8, 512)) * 0.02).astype(np.float32)
    data[0, :256] = 0.0  # an all-zero block must decode to zeros, not NaN
    for qtype, tolerance in ((T.Q4_K, 0.12), (T.Q6_K, 0.03)):
        decoded = gguf.quants.dequantize(quantize(data, qtype), qtype)
        assert decoded.shape == data.shape and np.all(decoded[0, :256] == 0)
        assert np.abs(decoded - data).mean() / np.abs(data).mean() < tolerance  # 4 and 6 bits, not garbage
    # Gemma-3-270M: 640-wide rows are no multiple of 256, so Q4_K -> Q5_0 and Q6_K -> Q8_0, as llama.cpp does
    assert q4_k_m_type("token_embd.weight", (262144, 640), 18, tied_output=True) == T.Q8_0
    assert q4_k_m_type("blk.3.attn_q.weight", (1024, 640), 18, tied_output=True) == T.Q5_0
    assert q4_k_m_type("blk.3.attn_output.weight", (640, 1024), 18, tied_output=True) == T.Q4_K
    assert q4_k_m_type("blk.0.ffn_down.weight", (640, 2048), 18, tied_output=True) == T.Q6_K
    assert q4_k_m_type("blk.3.ffn_down.weight", (640, 2048), 18, tied_output=True) == T.Q4_K
    assert q4_k_m_type("blk.3.attn_norm.weight", (640,), 18, tied_output=True) == T.F32


def test_a_gemma3_q4_k_m_gguf_loads_dequantized_with_its_tokenizer(gemma_gguf, device):
    from tasks.llm.real import load_causal_lm

    path, _ = gemma_gguf
    model, tokenizer, info = load_causal_lm(str(path), "float32", device)
    assert type(model).__name__ == "Gemma3ForCausalLM" and info["chat_template"] == "model's own"
    assert model.config.vocab_size == 4096 and len(tokenizer) == 4096
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} <= types  # every type of a Q4_K_M file
    # the weights are exactly the file's dequantized tensors (Gemma's norms stored as 1 + w)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, model.config.num_hidden_layers)
    state = model.state_dict()
    for tensor in gguf.GGUFReader(str(path)).tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))
        hf = next(k for k in state if k.endswith(".weight") and names.get_name(k[:-7]) + ".weight" == tensor.name)
        expected = torch.from_numpy(values.copy()) - (1.0 if tensor.name.endswith("norm.weight") else 0.0)
        assert torch.equal(state[hf].cpu(), expected), tensor.name
    text = tokenizer.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<start_of_turn>model\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert "▁do" in tokenizer.convert_ids_to_tokens(ids)  # words from the vocabulary stay whole
    from tasks.llm.generation import _end_of_turn_ids

    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in _end_of_turn_ids(tokenizer)  # generation stops there


def test_the_gemma3_gguf_runs_end_to_end(gemma_gguf, tmp_path, cache):
    path, _ = gemma_gguf
    for defense in ("none", "specdef"):
        spec = make_spec(task="llm-harmful-qa", defense=defense, attack="full-ft", tier="real", model=str(path),
                         task_args=CHEAP, defense_args={"n_layers": 2} if defense == "specdef" else {},
                         attack_args={"budget": 2, "eval_every": 1, "batch_size": 4, "lr": 1e-5})
        result = run(spec, Session(results_dir=tmp_path / "results", cache=cache, progress=False))
        assert result.status == "success", result.error
        info = json.loads((result.directory / "run.json").read_text())
        assert info["task_provenance"]["model_class"] == "Gemma3ForCausalLM"
        assert info["summary"]["steps_run"] == 2


def _models():
    from fixtures import LLAMA_SIZES
    from fixtures_gemma import gemma3_model
    from transformers import LlamaConfig, LlamaForCausalLM

    gemma = gemma3_model("test")
    gemma.config.final_logit_softcapping = 30.0  # Gemma-2-style soft-capping must be applied to the chunks too
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=600, **LLAMA_SIZES["test"]))
    for model in (gemma, llama):
        model.set_attn_implementation("eager")  # double backward (curvature) needs eager attention
    return gemma, llama


@pytest.mark.parametrize("which", [0, 1], ids=["gemma3-softcapped", "llama"])
def test_chunked_nll_equals_the_full_logits_nll_and_its_gradients(which, monkeypatch):
    model = _models()[which]
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 20), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[2, 15:] = 0  # right padding
    loss_mask = torch.zeros(3, 19)
    loss_mask[:, 6:14] = 1.0
    batch = Batch(ids, attention, loss_mask, torch.full((3,), 40.0))
    params = [p for p in model.parameters()]

    def nll_and_grads():
        nll = token_nll(model, batch)
        grads = torch.autograd.grad(response_loss(model, batch), params, allow_unused=True)
        return nll.detach(), grads

    full, full_grads = nll_and_grads()
    monkeypatch.setattr(chunked, "FULL_LOGITS_LIMIT", 0)  # every batch is chunked,
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", vocab * 5)  # 5 positions at a time (several chunks)
    calls = []
    original = chunked.response_nll
    monkeypatch.setattr(chunked, "response_nll", lambda *a: calls.append(1) or original(*a))
    chunk, chunk_grads = nll_and_grads()
    assert calls  # the chunked path ran
    assert torch.equal(chunk == 0, loss_mask == 0)
    torch.testing.assert_close(chunk, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunk_grads, full_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the reference outputs of function preservation: the logits at the real tokens
        positions = attention.bool()
        expected = model(input_ids=ids, attention_mask=attention).logits[positions].float()
        rows = chunked.logits_at(model, ids, attention, positions, chunked.head_of(model))
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-5)
    # Hessian-vector products (the curvature diagnostic) go through the checkpointed chunks
    grads = torch.autograd.grad(response_loss(model, batch), params, create_graph=True)
    hv = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), params, allow_unused=True)
    assert all(h is None or torch.isfinite(h).all() for h in hv)


def test_the_tiny_tier_keeps_the_full_logits_path(monkeypatch):
    """Below the size limit nothing changes (bit-identical tiny-tier numbers): the chunked path is never taken."""
    _, llama = _models()
    monkeypatch.setattr(chunked, "response_nll", lambda *a: pytest.fail("chunked path taken on a small batch"))
    ids = torch.randint(0, 600, (32, 256))  # the tiny tier's largest batch (eval_batch_size × max_length), vocab 512
    assert ids.numel() * 512 <= chunked.FULL_LOGITS_LIMIT
    batch = Batch(ids[:2, :8], torch.ones(2, 8, dtype=torch.long), torch.ones(2, 7), torch.ones(2))
    with torch.no_grad():
        token_nll(llama, batch)


def _whole_array_preservation(released, defended):
    """function_preservation as it was before it compared in row chunks (float64 copies of everything)."""
    r, d = np.asarray(released, dtype=np.float64), np.asarray(defended, dtype=np.float64)
    max_abs = float(np.max(np.abs(r - d)))
    r2, d2 = r.reshape(-1, r.shape[-1]), d.reshape(-1, d.shape[-1])
    log_p, log_q = _log_softmax(r2), _log_softmax(d2)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    return max_abs, max(kl, 0.0), float(np.mean(r2.argmax(-1) == d2.argmax(-1)))


def test_row_chunked_function_preservation_is_bit_identical_to_the_whole_array_one():
    rng = np.random.default_rng(0)
    released = rng.standard_normal((700, 97)).astype(np.float32) * 4  # several chunks of rows
    defended = released + rng.standard_normal(released.shape).astype(np.float32) * 1e-2
    defended[5, :] = released[5, ::-1]  # a row whose argmax moves
    expected = _whole_array_preservation(released.astype(np.float64), defended.astype(np.float64))
    for r, d in ((released, defended), (released.astype(np.float64), defended.astype(np.float64))):
        result = function_preservation(r, d)
        assert (result.max_abs_diff, result.mean_divergence, result.agreement) == expected
    broken = defended.copy()
    broken[600, 3] = np.nan
    assert function_preservation(released, broken).max_abs_diff == float("inf")
