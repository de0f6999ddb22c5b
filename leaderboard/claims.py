"""The claims ledger: per defense, what its paper claims (quoted from a primary source), and what others found.

One YAML file per defense in ``leaderboard/claims/`` (shipped with the package), named after the defense (a preset
that is a paper's own method, like TAR's ``sophon``, has its own file). Each entry holds the paper's own headline and
setting with the sentence it is quoted from, then a list of *items*, each of one kind:

* ``break`` — a third party defeats the claim;
* ``validation`` — a reproduction confirms it;
* ``reproduction-failure`` — a reproduction of the paper's own experiment does not confirm it;
* ``own-limitation`` — the paper's own theorem or caveat.

Every item names its primary source (``arXiv 2409.18025, Abstract``; ``owner/repo PR #52``; ``owner/repo:path``),
the sentence quoted from it and where that sentence was read (``read_at``). An item that could not be checked against
its primary source stays with ``verified: false`` and a ``note``; an item about another method than the one shipped
(e.g. T-Vaccine beside Vaccine) names it in ``variant``. Neither is counted. The status the leaderboard shows
(:func:`claim_status`: "no claim", "broken by N", "validated by N", ...) is computed from the counted items' kinds,
never written by hand. Nothing in the ledger is measured by the harness.

* :func:`load_claims` — read and validate every file (unknown keys, missing keys, wrong types, an unknown kind or a
  source of no recognised form are errors that name the file and the entry).
* :func:`claim_key` / :func:`claim_for` — the ledger entry of a leaderboard row, from its defense label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bench.errors import ConfigError

CLAIMS_DIR = Path(__file__).with_name("claims")
"""The built-in ledger."""

PRESET_CLAIMS = {"tar.sophon": "sophon"}
"""Presets that implement another paper's method, and the ledger entry they answer to."""

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
    arxiv: str | None
    """The paper's arXiv id, e.g. ``"2408.00761"``; None without one."""
    claim: str | None
    """The paper's own headline, with its numbers where the source gives them; None: no claim (the baseline, a
    control, an ablation), shown as "no claim"."""
    setting: str
    """The model, data and hyperparameters the claim was made in (or, without a claim, what the entry is)."""
    source: str | None
    """The primary source of the headline (or of the entry's description), in a form of :data:`SOURCE_HELP`."""
    quote: str | None
    """The sentence quoted from ``source``."""
    read_at: str | None
    """Where ``quote`` was read."""
    measured_metric: str | None
    """The leaderboard column to read beside the claim (e.g. ``worst_median``); None when nothing compares."""
    items: tuple[Item, ...]
    """Breaks, validations, failed reproductions and own limitations, each with its source and quote."""

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


_TYPES: dict[str, tuple[type, ...]] = {
    "defense": (str,), "paper": (str,), "arxiv": (str, type(None)), "claim": (str, type(None)), "setting": (str,),
    "source": (str, type(None)), "quote": (str, type(None)), "read_at": (str, type(None)),
    "measured_metric": (str, type(None)), "items": (list,)}
"""What each key of a claims file holds (YAML ``null`` is None)."""

_ITEM_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "summary": (str,), "source": (str,), "quote": (str,), "read_at": (str,), "verified": (bool,),
    "note": (str, type(None)), "variant": (str, type(None))}
"""What each key of a ledger item holds."""


def _typed(value: Any, where: str, key: str, kinds: tuple[type, ...]) -> Any:
    if not isinstance(value, kinds):
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        hint = " (quote it, e.g. '2408.00761')" if key == "arxiv" and isinstance(value, (int, float)) else ""
        raise ConfigError(f"{where}: {key} must be {wanted}, got {type(value).__name__} {value!r}{hint}")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{where}: {key} is empty")
    return value


OPTIONAL: dict[str, Any] = {"arxiv": None, "measured_metric": None, "items": [], "source": None, "quote": None,
                            "read_at": None}
"""Keys a claims file may leave out (a contributed defense's file needs only defense, paper, claim and setting; the
built-in ledger's test requires every entry's source and quote)."""

ITEM_OPTIONAL: dict[str, Any] = {"verified": True, "note": None, "variant": None}
"""Keys a ledger item may leave out."""


def _mapping(data: Any, where: str, allowed: list[str], optional: Mapping[str, Any] = {}) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    missing = [k for k in allowed if k not in data and k not in optional]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    return {**optional, **data}


def _check_source(source: str | None, where: str) -> None:
    if source is not None and not any(form.fullmatch(" ".join(source.split())) for form in _SOURCE_FORMS):
        raise ConfigError(f"{where}: source {source!r} is not a primary source; write {SOURCE_HELP}")


def parse_item(data: Any, where: str) -> Item:
    """A validated :class:`Item` from one entry of a file's ``items``; ``where`` names the file and the entry."""
    data = _mapping(data, where, [f.name for f in fields(Item)], ITEM_OPTIONAL)
    values = {key: _typed(data[key], where, key, kinds) for key, kinds in _ITEM_TYPES.items()}
    if values["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind {values['kind']!r} is not one of {', '.join(KINDS)}")
    _check_source(values["source"], where)
    if not values["verified"] and values["note"] is None:
        raise ConfigError(f"{where}: an unverified item needs a note saying what could not be checked")
    return Item(**values)


def parse_claim(data: Any, where: str) -> Claim:
    """A validated :class:`Claim` from one file's YAML data; ``where`` names the file in errors."""
    data = _mapping(data, where, [f.name for f in fields(Claim)], OPTIONAL)
    values = {key: _typed(data[key], where, key, kinds) for key, kinds in _TYPES.items()}
    where = f"{where} ({values['defense']})"
    if values["arxiv"] is not None and not _ARXIV.fullmatch(values["arxiv"]):
        raise ConfigError(f"{where}: arxiv must look like '2408.00761', got {values['arxiv']!r}")
    if (values["source"] is None) != (values["quote"] is None):
        raise ConfigError(f"{where}: source and quote go together (the quoted sentence and where it is from)")
    _check_source(values["source"], where)
    items = tuple(parse_item(item, f"{where}: items[{i}]") for i, item in enumerate(values["items"]))
    if values["claim"] is None and any(i.kind in ("break", "validation", "reproduction-failure") for i in items):
        raise ConfigError(f"{where}: an entry without a claim (claim: null) cannot be broken, validated or reproduced")
    return Claim(**{**values, "items": items})


def load_claims(directory: str | Path | None = None) -> dict[str, Claim]:
    """Every ``<defense>.yaml`` in ``directory`` (default: the built-in ledger), keyed by defense name."""
    directory = Path(directory) if directory is not None else CLAIMS_DIR
    if not directory.is_dir():
        raise ConfigError(f"claims directory {directory} does not exist")
    claims = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err  # one line
        claim = parse_claim(data, str(path))
        if claim.defense != path.stem:
            raise ConfigError(f"{path}: defense is {claim.defense!r} but the file is named after {path.stem!r}")
        claims[claim.defense] = claim
    return claims


def claim_key(label: str) -> str | None:
    """The ledger entry a leaderboard row's defense label answers to: the defense name before any ``.preset`` or
    ``(config)``, or the preset's own entry (:data:`PRESET_CLAIMS`); None for a composite ``a+b``."""
    depth = 0
    for char in label:  # a '+' inside a config value is not a composite
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "+" and depth == 0:
            return None
    base = label.split("(", 1)[0]
    return PRESET_CLAIMS.get(base, base.split(".", 1)[0])


def claim_for(label: str, claims: Mapping[str, Claim]) -> Claim | None:
    """The ledger entry of a leaderboard row (``claims`` from :func:`load_claims`), or None when it has none."""
    key = claim_key(label)
    return claims.get(key) if key is not None else None


def claim_of(label: str, claims: Mapping[str, Claim]) -> Claim | None:
    """The ledger entry of a site row (:func:`leaderboard.claims.claim_for`; a submitted row's mark is ignored)."""
    return claim_for(str(label).split(" [submission:", 1)[0], claims)


def source_url(source: str) -> str | None:
    """A link for a source: the arXiv abstract page of a paper, the GitHub page of a pull request, issue or file;
    None for this harness's own files."""
    source = " ".join(str(source).split())
    if m := re.match(r"arXiv (\d{4}\.\d{4,5})", source):
        return f"https://arxiv.org/abs/{m.group(1)}"
    if m := re.match(r"([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+) (PR|issue) #(\d+)", source):
        return f"https://github.com/{m.group(1)}/{'pull' if m.group(2) == 'PR' else 'issues'}/{m.group(3)}"
    if (m := re.match(r"([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+):([A-Za-z0-9_./-]+)", source)) and m.group(1) != "harness":
        return f"https://github.com/{m.group(1)}/blob/HEAD/{m.group(2)}"
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def claim_status(claim: Claim | None) -> str | None:
    """The status shown beside a defense, computed from its counted items' kinds: "no claim" (the baseline, a
    control, an ablation: ``claim: null``); else "broken by N" or "no known break", followed by "validated by N",
    "N failed reproduction(s)" and "N own limitation(s)" where there are any. None without a ledger entry (a
    composite). Unverified items and items about another method (``variant``) are not counted."""
    if claim is None:
        return None
    if claim.claim is None:
        return "no claim"
    breaks, validations, failures, limits = (len(claim.counted(kind)) for kind in KINDS)
    parts = [f"broken by {breaks}" if breaks else "no known break"]
    parts += [f"validated by {validations}"] if validations else []
    parts += [_plural(failures, "failed reproduction")] if failures else []
    parts += [_plural(limits, "own limitation")] if limits else []
    return ", ".join(parts)


def _flat(text: str) -> str:
    """One Markdown line: whitespace folded, '<' escaped so that no HTML tag opens."""
    return " ".join(str(text).split()).replace("<", "&lt;")


def item_label(item: Item) -> str:
    """How an item's kind is shown: its kind, marked when it is not counted."""
    marks = ([f"about {item.variant}, not counted"] if item.variant else []) + ([] if item.verified else ["unverified"])
    return item.kind + (f" ({'; '.join(marks)})" if marks else "")


def claims_markdown(labels: Iterable[str], claims: Mapping[str, Claim]) -> str:
    """A Markdown section with the ledger entry of every defense among ``labels`` (each entry once): the paper, its
    status, its quoted claim and setting, and every item with its kind, quote and source."""
    entries = dict.fromkeys(c for c in (claim_of(label, claims) for label in labels) if c is not None)
    if not entries:
        return ""
    lines = ["### Claims ledger", "",
             "What each method's paper claims, quoted from its primary source, and what others found "
             "(`leaderboard/claims/`), beside the measured numbers above. The status is computed from the items' "
             "kinds; unverified items are shown but not counted. Nothing here is measured by the harness.", ""]
    for claim in entries:
        arxiv = f", arXiv {claim.arxiv}" if claim.arxiv else ""
        headline = _flat(claim.claim) if claim.claim is not None else "No claim."
        quoted = f" \"{_flat(claim.quote)}\" ({_flat(claim.source)})" if claim.quote and claim.source else ""
        lines.append(f"- **{claim.defense}** ({_flat(claim.paper)}{arxiv}) — _{claim_status(claim)}_: {headline}"
                     f"{quoted} _Setting:_ {_flat(claim.setting)}")
        for item in claim.items:
            note = f" Note: {_flat(item.note)}" if item.note else ""
            lines.append(f"  - {item_label(item)}: {_flat(item.summary)} \"{_flat(item.quote)}\" "
                         f"({_flat(item.source)}){note}")
    return "\n".join(lines) + "\n"
