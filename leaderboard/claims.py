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

* :func:`load_claims` — read and validate every file (:mod:`bench.core.claims_file`, the format: unknown keys, missing
  keys, wrong types, an unknown kind or a source of no recognised form are errors that name the file and the entry,
  all of them at once).
* :func:`claim_key` / :func:`claim_for` — the ledger entry of a leaderboard row, from its defense label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from bench.core import claims_file
from bench.core.claims_file import KINDS, SOURCE_HELP, Claim, Item  # noqa: F401 - the ledger's vocabulary
from bench.core.tuning_presets import tuned_base

CLAIMS_DIR = Path(__file__).with_name("claims")
"""The built-in ledger."""

PRESET_CLAIMS = {"tar.sophon": "sophon"}
"""Presets that implement another paper's method, and the ledger entry they answer to."""


def load_claims(directory: str | Path | None = None) -> dict[str, Claim]:
    """Every ``<defense>.yaml`` in ``directory`` (default: the built-in ledger), keyed by defense name
    (:func:`bench.core.claims_file.load_claims`)."""
    return claims_file.load_claims(directory if directory is not None else CLAIMS_DIR)


def claim_key(label: str) -> str | None:
    """The ledger entry a leaderboard row's defense label answers to: the defense name before any ``.preset`` or
    ``(config)``, or the preset's own entry (:data:`PRESET_CLAIMS`), a tuned preset's that of what it tuned, as its
    preset record says (``tuned_from``; the name rule for records written before it:
    :func:`bench.core.tuning_presets.tuned_base`): ``tar.my-best`` tuned from ``tar.sophon`` is Sophon's; None for a
    composite ``a+b``."""
    depth = 0
    for char in label:  # a '+' inside a config value is not a composite
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "+" and depth == 0:
            return None
    base = label.split("(", 1)[0]
    base = tuned_base(base)  # a tuned preset answers to what it tuned: tar.sophon-tuned-vision-digits is Sophon
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
