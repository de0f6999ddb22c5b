"""A CLIP tokenizer trained in-process on the tiny tier's captions (no hub download).

The BPE is trained with the ``tokenizers`` library using CLIP's own normalisation, pre-tokenisation (byte-level, words
ending in ``</w>``) and special tokens, then handed to ``transformers.CLIPTokenizer`` as a vocab and merge list, so
the result saves and reloads like any CLIP tokenizer (``vocab.json`` + ``merges.txt``). Every word of the corpus ends
up as one token because the vocabulary is allowed to grow until no merge is left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
MAX_LENGTH = 8
"""Token limit of the tiny tier's captions (the longest, with its start and end tokens, has 7: little padding for cross-attention to average over)."""


def train_clip_tokenizer(corpus: Iterable[str], *, max_length: int = MAX_LENGTH):
    """A ``CLIPTokenizer`` whose BPE is trained on ``corpus`` (deterministic for a given corpus)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token=SPECIALS[1], end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
                                  show_progress=False)
    bpe.train_from_iterator(sorted(set(corpus)), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    learned = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # The trainer learns the same merges on every run, but orders equally frequent ones (and numbers their tokens)
    # in whatever order its hash maps yield (measured: 1 run in 4 differed), and token ids decide which embedding
    # row each word trains. A fixed order keeps the released model reproducible: merges by the length of what they
    # build (a merge's parts are always shorter, so they come first), then alphabetically.
    merges = sorted(learned, key=lambda m: (len(m[0] + m[1]), m[0] + m[1], m))
    return CLIPTokenizer(vocab=canonical_vocab(state["vocab"], merges), merges=merges, model_max_length=max_length)


def canonical_vocab(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token ids in a fixed order: special tokens, then single symbols sorted, then merge results in merge order."""
    merged = list(dict.fromkeys("".join(m) for m in merges))
    singles = sorted(t for t in vocab if t not in SPECIALS and t not in set(merged))
    order = list(dict.fromkeys([*SPECIALS, *singles, *merged]))
    if set(order) != set(vocab):
        raise ValueError("BPE vocabulary and merges disagree")  # cannot happen for a trained BPE
    return {token: i for i, token in enumerate(order)}


def write_vocab_files(tokenizer, directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the classic CLIP tokenizer files) of ``tokenizer`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (directory / "vocab.json").write_text(json.dumps(state["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory
