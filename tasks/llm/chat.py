"""Chat-template handling and token batches shared by training, attacks, probes and evaluation.

One function, :func:`encode_chat`, turns (prompt, response) into token ids with the model's own chat template, so
the released model's training, the attacker's data, the probe and the generation eval all see the same format. The
prompt part is the template rendered with ``add_generation_prompt=True``; the response part is the rest of the
rendered conversation (the response and the template's end-of-turn marker). Each part is tokenized on its own, so
the boundary is exact whatever the template does (some templates insert a default system prompt or a date).

A tokenizer without a chat template (e.g. GPT-2's) gets :data:`FALLBACK_TEMPLATE` with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from tasks.llm import chunked

FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""Used when a tokenizer has no chat template: ``User: ...`` / ``Assistant: ...`` turns, the answer ended by EOS."""


def ensure_chat_template(tokenizer, name: str = "tokenizer") -> bool:
    """Give ``tokenizer`` the fallback template (and a pad token) when it lacks one; returns True if it did."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None):
        return False
    warnings.warn(f"{name} has no chat template; using the fallback 'User: ... / Assistant: ...' template. "
                  "Results then describe that format, not the model's own.", stacklevel=2)
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return True


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    prompt_len: int
    """Number of leading tokens that belong to the prompt (no loss on them)."""
    response_chars: int
    """Characters of the response text (the denominator of NLL per character)."""


def render_prompt(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode_chat(tokenizer, prompt: str, response: str) -> Encoded:
    """Token ids of one exchange and where the response starts (see the module docstring)."""
    head = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):  # a template that renders the last user turn differently once answered
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation; "
                         "responses cannot be separated from prompts")
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    return Encoded(tuple(prompt_ids + response_ids), len(prompt_ids), len(response))


def encode_text(tokenizer, text: str) -> Encoded:
    """Plain text (no template, the tokenizer's own special tokens): every token after the first is scored."""
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(tuple(ids), 1 if ids[0] == tokenizer.bos_token_id else 0, len(text))


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids with a loss mask over response tokens, and the response lengths in characters."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    """1 where the *next-token* target at this position is a response token (aligned with logits[:, :-1])."""
    chars: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_positions(self) -> torch.Tensor:
        """(batch, length) bool: the positions whose next-token output the loss counts (``loss_mask`` widened by
        the last position, which predicts nothing)."""
        return F.pad(self.loss_mask, (0, 1)).bool()

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                     self.chars.to(device))


def collate(items: Sequence[Encoded], pad_id: int, max_length: int = 0) -> Batch:
    """Pad ``items`` into one batch; ``max_length`` > 0 keeps the last tokens of longer items (left truncation)."""
    rows = []
    for item in items:
        ids, start = list(item.ids), item.prompt_len
        if max_length and len(ids) > max_length:
            cut = len(ids) - max_length
            ids, start = ids[cut:], max(start - cut, 1)
        rows.append((ids, start))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        loss_mask[i, start - 1:len(ids) - 1] = 1.0
    chars = torch.tensor([max(item.response_chars, 1) for item in items], dtype=torch.float32)
    return Batch(input_ids, attention, loss_mask, chars)


def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits


def token_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-position next-token NLL (float32), zero outside the response; shape (batch, length - 1).

    When the full logits would be large (a big vocabulary times the batch's positions), the LM head runs in chunks
    over the response positions only (:mod:`tasks.llm.chunked`: equal to float rounding, a fraction of the memory)."""
    parts = chunked.head_of(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    if parts is not None and batch.input_ids.numel() * vocab > chunked.FULL_LOGITS_LIMIT:
        device = next(model.parameters()).device
        return chunked.response_nll(model, batch.input_ids.to(device), batch.attention_mask.to(device),
                                    batch.loss_mask.to(device), parts)
    logits = logits_of(model, batch)[:, :-1].float()
    targets = batch.input_ids[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape) * batch.loss_mask.to(logits.device)


def response_loss(model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """Mean NLL over the batch's response tokens (the training loss of every chat objective here).

    ``reduction="none"``: one value per example, the mean NLL over *its* response tokens (so the batch mean is the
    per-example values weighted by their response lengths, not their plain average).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    nll = token_nll(model, batch)
    mask = batch.loss_mask.to(nll.device)
    if reduction == "none":
        return nll.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return nll.sum() / mask.sum().clamp_min(1.0)


def nll_per_char(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-item NLL of the response in nats per character (float64 on CPU)."""
    nll = token_nll(model, batch).sum(dim=1).double().cpu()
    return nll / batch.chars.double().cpu()
