"""llama.cpp's Q4_K_M recipe in Python: which tensor gets which GGML type, and the Q4_K / Q6_K block quantizers.

The ``gguf`` package quantizes the legacy block types (Q4_0 … Q8_0) but only *dequantizes* the k-quants, so a test or
benchmark that wants a Q4_K_M file without llama.cpp's C tools quantizes Q4_K and Q6_K here. The bytes follow the
block layouts that ``gguf.quants`` (and transformers, through it) decode; the quantizer is the plain min/max one
(no importance matrix, no llama.cpp search for the best scales), so a file agrees with llama.cpp's on layout and
types, not bit for bit. :func:`q4_k_m_type` follows ``llama_tensor_get_type`` for ``LLAMA_FTYPE_MOSTLY_Q4_K_M``:
the output (or tied token embedding), half of ``attn_v`` and ``ffn_down`` in Q6_K, the other matrices Q4_K, 1-D
tensors F32, and a row length that is not a multiple of 256 falls back to Q5_0 (for Q4_K) or Q8_0 (for Q6_K), as
for Gemma-3-270M's 640-wide rows.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(values.shape[0], 2)


def quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    """Q4_K blocks of ``rows`` (float32, last dimension a multiple of 256): 144 bytes per 256 values."""
    blocks = rows.astype(np.float32).reshape(-1, 8, 32)
    n = blocks.shape[0]
    low = np.minimum(blocks.min(axis=-1), 0.0)  # x ≈ scale * q - min, q in 0..15, min >= 0
    scale = (blocks.max(axis=-1) - low) / 15.0
    mins = -low
    d = scale.max(axis=-1) / 63.0
    dmin = mins.max(axis=-1) / 63.0
    # the super-block scales are stored as fp16: quantize the 6-bit sub-scales against the rounded values
    d = d.astype(np.float16).astype(np.float32)
    dmin = dmin.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.rint(np.where(d[:, None] > 0, scale / d[:, None], 0)), 0, 63).astype(np.uint8)
        mn = np.clip(np.rint(np.where(dmin[:, None] > 0, mins / dmin[:, None], 0)), 0, 63).astype(np.uint8)
        step = d[:, None] * sc
        offset = dmin[:, None] * mn
        q = np.where(step[..., None] > 0, np.rint((blocks + offset[..., None]) / step[..., None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed = np.empty((n, 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # byte j of pair c: sub-block 2c low, 2c+1 high nibble
    return np.concatenate([_fp16(d), _fp16(dmin), packed, qs], axis=1)


def quantize_q6_k(rows: np.ndarray) -> np.ndarray:
    """Q6_K blocks of ``rows`` (float32, last dimension a multiple of 256): 210 bytes per 256 values."""
    values = rows.astype(np.float32).reshape(-1, 16, 16)
    n = values.shape[0]
    scale = np.abs(values).max(axis=-1) / 31.0  # q in -32..31
    d = (scale.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.rint(np.where(d[:, None] > 0, scale / d[:, None], 0)), -128, 127).astype(np.int8)
        step = d[:, None] * sc
        q = np.where(step[..., None] != 0, np.rint(values / step[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # two halves of 128 values
    # per half: byte l holds value l's low 4 bits (low nibble) and value 64 + l's (high nibble)
    ql = ((q[:, :, 0:2].reshape(n, 2, 64) & 0x0F) | ((q[:, :, 2:4].reshape(n, 2, 64) & 0x0F) << 4)).reshape(n, 128)
    hi = q >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _fp16(d)], axis=1)


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers whose ``attn_v`` and ``ffn_down`` get more bits in Q4_K_M."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def q4_k_m_type(name: str, shape: tuple[int, ...], n_layers: int, tied_output: bool):
    """The GGML type llama.cpp's Q4_K_M gives the tensor ``name`` (gguf naming) of ``shape`` (numpy order)."""
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2:
        return T.F32
    if name == "output.weight" or (tied_output and name == "token_embd.weight"):
        wanted = T.Q6_K
    elif name.endswith(("attn_v.weight", "ffn_down.weight")):
        wanted = T.Q6_K if use_more_bits(int(name.split(".")[1]), n_layers) else T.Q4_K
    else:
        wanted = T.Q4_K
    if shape[-1] % QK_K:
        return {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}[wanted]
    return wanted


def quantize(data: np.ndarray, qtype) -> np.ndarray:
    """``data`` (float32, numpy order) as the bytes of ``qtype`` (uint8, rows of blocks)."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if qtype in (T.Q4_K, T.Q6_K):
        rows = data.reshape(-1, data.shape[-1])
        blocks = (quantize_q4_k if qtype == T.Q4_K else quantize_q6_k)(rows)
        return blocks.reshape(*data.shape[:-1], -1)
    return gguf.quants.quantize(data, qtype)
