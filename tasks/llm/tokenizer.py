"""The tiny tier's tokenizer: a byte-level BPE trained in-process on the released model's training text.

Byte-level, so any text (a user's own harmful prompts included) encodes without unknown tokens. It adds ``<|bos|>``
in front of every encoded text, as Llama tokenizers do, and carries a chat template, so the tiny tier goes through
exactly the code path of a real chat model (``apply_chat_template``) in training, attack and evaluation:

``<|bos|><|user|>{prompt}<|end|><|assistant|>{response}<|end|>`` (``<|end|>`` is the end-of-sequence token).

Training is deterministic for a given corpus; the tokenizer is saved next to the released model in the cache, so a
cached model is always paired with the tokenizer it was trained with.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLES)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE of ``vocab_size`` tokens) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(texts), trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        additional_special_tokens=list(ROLES))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
