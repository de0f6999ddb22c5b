"""A local Gemma-3 chat model written as a Q4_K_M ``.gguf`` file, for tests and the real-tier CPU benchmark.

No hub access: :func:`save_gemma3_gguf` builds a Gemma-3 text model from a config (``270m``: Gemma-3-270M's shapes,
hidden 640, 18 layers, 4 query heads and 1 KV head of 256, MLP 2048, a 262,144-token vocabulary, sliding window
512; ``test``: the same architecture in seconds, with a 4,096-token vocabulary), random weights, and writes it the
way llama.cpp's converter and its Q4_K_M quantization do (gemma3 tensor names, norm weights stored as ``1 + w``,
a sentencepiece vocabulary with Gemma's special tokens and turn markers, no merges, a Gemma chat template; types
from :func:`kquants.q4_k_m_type`). transformers then loads it through its own GGUF path (tokenizer rebuilt
from the vocabulary, weights dequantized), which is what the real tier does with a downloaded file. The vocabulary
is built from the bundled chat text (its characters and word prefixes, so text encodes into words) and filled up to
size with pieces made of two earlier ones, so that every piece is reachable by a merge as in a trained vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

GEMMA3_SIZES = {
    "test": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 128, "vocab_size": 4096, "sliding_window": 64},
    # google/gemma-3-270m's text config (its sizes; the rope bases and layer pattern are the config defaults)
    "270m": {"hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
             "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "sliding_window": 512},
}
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
"""Gemma's special tokens (GemmaTokenizer adds a <mask> token if the vocabulary lacks one, past the model's rows)."""
CONTEXT = 32768
Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M (general.file_type)


def gemma_vocabulary(size: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``size`` sentencepiece pieces (``▁`` for a space) and their GGUF token types, Gemma's layout."""
    import gguf

    from tasks.llm import benign, prompts

    texts = [f"{p.prompt} {p.response}" for p in benign.chat_pairs()]
    texts += [f"{item.prompt} {item.response}" for item in prompts.load_harmful("")[0]]
    tokens = list(SPECIAL) + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.CONTROL] * len(SPECIAL) + [gguf.TokenType.BYTE] * 256
    seen = set(tokens)

    def add(piece: str) -> None:
        if piece not in seen and len(tokens) < size:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)

    words = [("▁" + word) for text in texts for word in text.replace("\n", " ").split(" ") if word]
    for char in sorted({c for word in words for c in word}):
        add(char)
    add("\n")
    counts: dict[str, int] = {}
    for word in words:
        for end in range(2, len(word) + 1):
            counts[word[:end]] = counts.get(word[:end], 0) + 1
    for word in words:  # the same words at the start of a line, where no space precedes them
        for end in range(2, len(word)):
            counts.setdefault(word[1:end + 1], 0)
    for piece in sorted(counts, key=lambda p: (len(p), -counts[p], p)):  # a prefix always before its extensions
        add(piece)
    if len(tokens) < size:
        rng = np.random.default_rng(seed)
        short = [t for t in tokens[len(SPECIAL) + 256:] if len(t) <= 12]
        tails = [t.removeprefix("▁") for t in short if 0 < len(t.removeprefix("▁")) <= 4]
        while len(tokens) < size:  # a piece made of two earlier ones, so a merge can reach it
            lefts = rng.integers(0, len(short), size=4096)
            rights = rng.integers(0, len(tails), size=4096)
            for left, right in zip(lefts.tolist(), rights.tolist()):
                piece = short[left] + tails[right]
                if piece not in seen:
                    add(piece)
                    if len(piece) <= 12:
                        short.append(piece)
    return tokens, [int(t) for t in types]


def gemma3_model(size: Literal["test", "270m"] = "test", seed: int = 0, tokens: list[str] | None = None):
    """A randomly initialised ``Gemma3ForCausalLM`` of ``size`` (float32, eval mode)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    shape = dict(GEMMA3_SIZES[size])
    config = Gemma3TextConfig(**shape, max_position_embeddings=CONTEXT, pad_token_id=0, eos_token_id=1,
                              bos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


def save_gemma3_gguf(path: Path, size: Literal["test", "270m"] = "test", seed: int = 0,
                     checkpoint: Path | None = None) -> tuple[Path, torch.nn.Module]:
    """Write a random Gemma-3 model of ``size`` to ``path`` as a Q4_K_M GGUF file; returns (path, the float32
    model before quantization). ``checkpoint``: also save that model there as a transformers checkpoint."""
    import gguf
    from kquants import q4_k_m_type, quantize

    shape = GEMMA3_SIZES[size]
    tokens, types = gemma_vocabulary(shape["vocab_size"], seed)
    model = gemma3_model(size, seed)
    config = model.config
    if checkpoint is not None:
        model.save_pretrained(checkpoint)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name(f"bench random gemma-3 {size}")
    writer.add_file_type(Q4_K_M)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["full_attention"]["rope_theta"]))
    writer.add_sliding_window(config.sliding_window)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types(types)
    writer.add_bos_token_id(SPECIAL.index("<bos>"))
    writer.add_eos_token_id(SPECIAL.index("<eos>"))
    writer.add_unk_token_id(SPECIAL.index("<unk>"))
    writer.add_pad_token_id(SPECIAL.index("<pad>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(GEMMA_TEMPLATE)

    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied to the token embedding, as in Gemma's files
        base, _, suffix = hf_name.rpartition(".")
        name = f"{names.get_name(base)}.{suffix}"
        data = tensor.detach().float().numpy()
        if name.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp stores Gemma's RMSNorm scale (1 + w); transformers subtracts the 1
        qtype = q4_k_m_type(name, data.shape, config.num_hidden_layers, tied_output=True)
        writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path), model
