"""Next-token NLL of response tokens without the full-vocabulary logits: the LM head applied in chunks of rows.

A causal LM's forward returns logits for every position and every vocabulary entry: with Gemma-3's 262,144 tokens,
one evaluation batch (32 × 256 positions) is 8.6 GB of float32, and ``cross_entropy`` adds a second copy. The losses
and NLLs here only need the positions the loss mask counts, so :func:`response_nll` runs the decoder once, keeps the
final hidden states at those positions, and applies the LM head (and the model's final logit soft-capping, if any)
to at most :data:`CHUNK_ELEMENTS` logits at a time; under autograd each chunk is checkpointed, so its logits are
recomputed in backward instead of kept. The result equals the full computation to float rounding (tested), not bit
for bit, so :func:`tasks.llm.chat.token_nll` only takes this path when the full logits would exceed
:data:`FULL_LOGITS_LIMIT` (never on the tiny tier, whose numbers stay identical). :func:`logits_at` does the same
for the reference outputs of function preservation (the logits at given positions, without the padding's).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk (64 MiB of float32): 64 positions of a 262k vocabulary."""
FULL_LOGITS_LIMIT = 1 << 27
"""Above this many logits (512 MiB of float32) per forward, the NLL is computed in chunks."""
_OTHER_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields of model classes whose forward rescales logits beyond the LM head: those keep the full path."""


def head_of(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None] | None:
    """(decoder, LM head, final logit soft-cap) of a transformers causal LM whose logits are ``head(decoder(x))``
    (soft-capped when the config says so), or None for a model this module cannot split."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    config = getattr(model, "config", None)
    if get_decoder is None or get_head is None or config is None:
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _OTHER_LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or decoder is model:
        return None
    return decoder, head, getattr(config, "final_logit_softcapping", None)


def _logits(head: nn.Module, softcap: float | None, hidden: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk_nll(head: nn.Module, softcap: float | None, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_logits(head, softcap, hidden), targets, reduction="none")


def _rows_per_chunk(model: nn.Module, head: nn.Module) -> int:
    vocab = int(getattr(head, "out_features", 0) or model.config.vocab_size)
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


@torch.no_grad()
def logits_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
              parts: tuple[nn.Module, nn.Module, float | None]) -> torch.Tensor:
    """The float32 logits at ``positions`` (a (batch, length) bool mask), one row per position, computed in chunks:
    the full (batch, length, vocabulary) tensor never exists, only the rows asked for."""
    decoder, head, softcap = parts
    rows = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[positions]
    step = _rows_per_chunk(model, head)
    out = None
    for start in range(0, rows.shape[0], step):
        chunk = _logits(head, softcap, rows[start:start + step])
        if out is None:
            out = chunk.new_empty((rows.shape[0], chunk.shape[-1]))
        out[start:start + step] = chunk
    return out if out is not None else rows.new_zeros((0, 0), dtype=torch.float32)


def response_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                 parts: tuple[nn.Module, nn.Module, float | None]) -> torch.Tensor:
    """Per-position next-token NLL (float32), zero outside ``loss_mask``; shape (batch, length - 1), like
    :func:`tasks.llm.chat.token_nll`. ``parts`` is :func:`head_of`'s answer for ``model``."""
    decoder, head, softcap = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    mask = loss_mask.bool()
    rows, targets = hidden[mask], input_ids[:, 1:][mask]
    step = _rows_per_chunk(model, head)
    pieces = []
    for start in range(0, rows.shape[0], step):
        chunk, chunk_targets = rows[start:start + step], targets[start:start + step]
        if torch.is_grad_enabled():  # keep only the hidden rows for backward, recompute the logits there
            pieces.append(checkpoint(_chunk_nll, head, softcap, chunk, chunk_targets, use_reentrant=False))
        else:
            pieces.append(_chunk_nll(head, softcap, chunk, chunk_targets))
    nll = torch.cat(pieces) if pieces else rows.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(mask.shape, dtype=nll.dtype, device=nll.device)
    return out.masked_scatter(mask, nll)
