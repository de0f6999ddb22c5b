"""The claims ledger: per defense, what its paper claims, in which setting, and the published breaks of it.

One YAML file per defense in ``leaderboard/claims/`` (shipped with the package), named after the defense (a preset
that is a paper's own method, like TAR's ``sophon``, has its own file). The leaderboard shows a defense's claim
beside its measured worst case and flags it when a published break exists, as RobustBench does. Every fact quotes
its source; nothing in the ledger is measured by the harness.

* :func:`load_claims` — read and validate every file (unknown keys, missing keys and wrong types are errors that
  name the file).
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

_ARXIV = re.compile(r"\d{4}\.\d{4,5}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Break:
    """A published result that defeats the defense (or shows its claim does not hold)."""

    summary: str
    """What the break found, with its numbers as published."""
    source: str
    """Where it was published: a paper with its arXiv id, or a benchmark's pull request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """One defense's ledger entry."""

    defense: str
    """The registered defense name (or preset name, see :data:`PRESET_CLAIMS`) the entry is about."""
    paper: str
    """Authors and year of the method's paper (or why there is none, e.g. a control or an ablation)."""
    arxiv: str | None
    """The paper's arXiv id, e.g. ``"2408.00761"``; None without one."""
    claim: str
    """The result the paper claims, with its numbers where the sources give them."""
    setting: str
    """The model, data and hyperparameters the claim was made in."""
    measured_metric: str | None
    """The leaderboard column to read beside the claim (e.g. ``worst_median``); None when nothing compares."""
    breaks: tuple[Break, ...]
    """Published breaks, each with its source."""
    known_broken: bool
    """True when a published break exists (then ``breaks`` lists it)."""

    def __post_init__(self) -> None:
        if self.known_broken and not self.breaks:
            raise ConfigError(f"claims of {self.defense!r}: known_broken is true but no break is listed")


_TYPES: dict[str, tuple[type, ...]] = {
    "defense": (str,), "paper": (str,), "arxiv": (str, type(None)), "claim": (str,), "setting": (str,),
    "measured_metric": (str, type(None)), "breaks": (list,), "known_broken": (bool,)}
"""What each key of a claims file holds (YAML ``null`` is None)."""


def _typed(value: Any, where: str, key: str, kinds: tuple[type, ...]) -> Any:
    if not isinstance(value, kinds):
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        hint = " (quote it, e.g. '2408.00761')" if key == "arxiv" and isinstance(value, (int, float)) else ""
        raise ConfigError(f"{where}: {key} must be {wanted}, got {type(value).__name__} {value!r}{hint}")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{where}: {key} is empty")
    return value


OPTIONAL: dict[str, Any] = {"arxiv": None, "measured_metric": None, "breaks": [], "known_broken": False}
"""Keys a claims file may leave out (a contributed defense's file needs only defense, paper, claim and setting)."""


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


def parse_claim(data: Any, where: str) -> Claim:
    """A validated :class:`Claim` from one file's YAML data; ``where`` names the file in errors."""
    data = _mapping(data, where, [f.name for f in fields(Claim)], OPTIONAL)
    values = {key: _typed(data[key], where, key, kinds) for key, kinds in _TYPES.items()}
    if values["arxiv"] is not None and not _ARXIV.fullmatch(values["arxiv"]):
        raise ConfigError(f"{where}: arxiv must look like '2408.00761', got {values['arxiv']!r}")
    breaks = []
    for i, item in enumerate(values["breaks"]):
        at = f"{where}: breaks[{i}]"
        item = _mapping(item, at, [f.name for f in fields(Break)])
        breaks.append(Break(summary=_typed(item["summary"], at, "summary", (str,)),
                            source=_typed(item["source"], at, "source", (str,))))
    if values["known_broken"] and not breaks:
        raise ConfigError(f"{where}: known_broken is true but no break is listed")
    return Claim(**{**values, "breaks": tuple(breaks)})


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


def claim_status(claim: Claim | None) -> str | None:
    """The short word on a claim: known broken (with how many breaks), no known break, or no claim (a ledger entry
    without a paper: the baseline, the ablations); None without a ledger entry (a composite)."""
    if claim is None:
        return None
    breaks = len(claim.breaks)
    if claim.arxiv is None and not claim.known_broken:
        return "no claim"  # the baseline and the ablations: no paper claims anything for them
    if claim.known_broken:
        return f"known broken ({breaks} external break{'s' if breaks != 1 else ''})"
    return "no known break"


def claims_markdown(labels: Iterable[str], claims: Mapping[str, Claim]) -> str:
    """A Markdown section with the ledger entry of every defense among ``labels`` (each entry once): the paper,
    its claim and setting, and the published breaks with their sources."""
    entries = dict.fromkeys(c for c in (claim_of(label, claims) for label in labels) if c is not None)
    if not entries:
        return ""
    lines = ["### Claims ledger", "",
             "What each method's paper claims and the published breaks of it (`leaderboard/claims/`), beside the "
             "measured numbers above. Nothing here is measured by the harness.", ""]
    for claim in entries:
        arxiv = f", arXiv {claim.arxiv}" if claim.arxiv else ""
        lines.append(f"- **{claim.defense}** ({claim.paper}{arxiv}): {' '.join(claim.claim.split())} "
                     f"_Setting:_ {' '.join(claim.setting.split())}")
        for item in claim.breaks:
            lines.append(f"  - break: {' '.join(item.summary.split())} ({' '.join(item.source.split())})")
    return "\n".join(lines) + "\n"
