"""The claims-file format: one defense's ledger entry (:class:`Claim`) with its items (:class:`Item`), read and
validated by :func:`load_claims` through :mod:`bench.core.yaml_dataclass` (every unknown key, missing key and ill-typed
value at once, one line each, naming the file and the entry).

The leaderboard's ledger (``leaderboard/claims/``, :mod:`leaderboard.claims`) and ``bench submit --claims`` read
claims files with it; this module is the format, the leaderboard decides what a claim's status is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.core.yaml_dataclass import collect, read_mapping
from bench.errors import ConfigError

KINDS = ("break", "validation", "reproduction-failure", "own-limitation")
"""The kinds of ledger item, in the order the status names them."""

_ARXIV = re.compile(r"\d{4}\.\d{4,5}")
_SOURCE_FORMS = (
    # a paper: its arXiv id and where in it (abstract, table, section, figure, appendix, theorem)
    re.compile(r"arXiv \d{4}\.\d{4,5}(v\d+)?, (Abstract|Table|Section|§|Figure|Fig\.|Appendix|Theorem|Algorithm)\b.*"),
    # a repository's pull request or issue
    re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+ (PR|issue) #\d+\b.*"),
    # a file in a public repository, or (for entries without a paper) in this harness
    re.compile(r"([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|harness):[A-Za-z0-9_./-]+\b.*"),
)
SOURCE_HELP = ("'arXiv 2409.18025, Abstract' (or Table N / Section N / Figure N / Appendix X / Theorem N), "
               "'owner/repo PR #52' (or issue #N), or 'owner/repo:path/to/file' ('harness:path' for this project)")
"""The forms a source may take, for error messages."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One published finding about a defense's claim."""

    kind: str
    """One of :data:`KINDS`."""
    summary: str
    """What was found, with its numbers as published."""
    source: str
    """The primary source, in one of the forms of :data:`SOURCE_HELP`."""
    quote: str
    """The sentence quoted from the source (verbatim)."""
    read_at: str
    """Where the quote was read (a URL or a repository path), so that anyone can check it."""
    verified: bool = True
    """False when the item could not be checked against its primary source: shown as unverified, not counted."""
    note: str | None = None
    """Why an item is unverified, or what else a reader must know about it."""
    variant: str | None = None
    """Another method than the one shipped that the item is about (e.g. T-Vaccine); shown, not counted."""

    def __post_init__(self) -> None:
        _check_text(self, ("summary", "source", "quote", "read_at", "note", "variant"))
        if self.kind not in KINDS:
            raise ConfigError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        _check_source(self.source)
        if not self.verified and self.note is None:
            raise ConfigError("an unverified item needs a note saying what could not be checked")

    @property
    def counted(self) -> bool:
        """Whether the item counts towards the status: verified, and about the shipped method itself."""
        return self.verified and self.variant is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """One defense's ledger entry."""

    defense: str
    """The registered defense name (or preset name, see :data:`PRESET_CLAIMS`) the entry is about."""
    paper: str
    """Authors and year of the method's paper (or why there is none, e.g. a control or an ablation)."""
    arxiv: str | None = None
    """The paper's arXiv id, e.g. ``"2408.00761"``; None without one."""
    claim: str | None
    """The paper's own headline, with its numbers where the source gives them; None: no claim (the baseline, a
    control, an ablation), shown as "no claim"."""
    setting: str
    """The model, data and hyperparameters the claim was made in (or, without a claim, what the entry is)."""
    source: str | None = None
    """The primary source of the headline (or of the entry's description), in a form of :data:`SOURCE_HELP`."""
    quote: str | None = None
    """The sentence quoted from ``source``."""
    read_at: str | None = None
    """Where ``quote`` was read."""
    measured_metric: str | None = None
    """The leaderboard column to read beside the claim (e.g. ``worst_median``); None when nothing compares."""
    items: tuple[Item, ...] = ()
    """Breaks, validations, failed reproductions and own limitations, each with its source and quote."""

    def __post_init__(self) -> None:
        _check_text(self, ("defense", "paper", "arxiv", "claim", "setting", "source", "quote", "read_at",
                           "measured_metric"))
        if self.arxiv is not None and not _ARXIV.fullmatch(self.arxiv):
            raise ConfigError(f"arxiv must look like '2408.00761', got {self.arxiv!r}")
        if (self.source is None) != (self.quote is None):
            raise ConfigError("source and quote go together (the quoted sentence and where it is from)")
        _check_source(self.source)
        if self.claim is None and any(i.kind in ("break", "validation", "reproduction-failure") for i in self.items):
            raise ConfigError("an entry without a claim (claim: null) cannot be broken, validated or reproduced")

    def counted(self, kind: str) -> tuple[Item, ...]:
        """The counted items (verified, about this method) of one kind."""
        return tuple(i for i in self.items if i.kind == kind and i.counted)

    @property
    def breaks(self) -> tuple[Item, ...]:
        """The counted breaks."""
        return self.counted("break")

    @property
    def known_broken(self) -> bool:
        """True when a counted third-party break exists."""
        return bool(self.breaks)


def _check_text(entry: object, keys: tuple[str, ...]) -> None:
    """A text key given must say something (YAML ``null`` is None, and allowed where the field is optional)."""
    empty = [key for key in keys if isinstance(getattr(entry, key), str) and not getattr(entry, key).strip()]
    if empty:
        raise ConfigError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty")


def _check_source(source: str | None) -> None:
    if source is not None and not any(form.fullmatch(" ".join(source.split())) for form in _SOURCE_FORMS):
        raise ConfigError(f"source {source!r} is not a primary source; write {SOURCE_HELP}")


def parse_claim(data: object, where: str) -> Claim:
    """A validated :class:`Claim` from one file's YAML data; ``where`` names the file in errors."""
    defense = data.get("defense") if isinstance(data, dict) else None
    problems: list[str] = []
    claim = collect(Claim, data, f"{where} ({defense})" if isinstance(defense, str) else where, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return claim


def read_claim(path: str | Path) -> Claim:
    """The validated entry of one claims file; a ConfigError lists every problem, each naming the file (and the
    entry's defense) and the key."""
    return parse_claim(read_mapping(path, "claims file"), str(path))


def load_claims(directory: str | Path) -> dict[str, Claim]:
    """Every ``<defense>.yaml`` in ``directory``, keyed by defense name (each file named after its defense)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"claims directory {directory} does not exist")
    claims = {}
    for path in sorted(directory.glob("*.yaml")):
        claim = read_claim(path)
        if claim.defense != path.stem:
            raise ConfigError(f"{path}: defense is {claim.defense!r} but the file is named after {path.stem!r}")
        claims[claim.defense] = claim
    return claims
