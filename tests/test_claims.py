"""The claims ledger (leaderboard/claims/*.yaml): every registered defense has an entry; every entry and item names a
primary source and quotes it; the status shown is computed from the items' kinds (unverified items and items about
a variant not counted); a malformed file is a one-line error naming the file and the entry; and the built-in
ledger's statuses are the ones its sources support (the corrections of issue 21 pinned)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.core.builtins import BUILTINS
from bench.core.claims_file import parse_claim
from bench.errors import ConfigError
from bench.registry import DEFENSES
from leaderboard.claims import (
    CLAIMS_DIR,
    KINDS,
    claim_for,
    claim_key,
    claim_status,
    claims_markdown,
    load_claims,
    source_url,
)

BUILT_IN = sorted(name for kind, name, *_ in BUILTINS if kind == "defense")
LEDGER = load_claims()


@pytest.mark.parametrize("name", [name for name in DEFENSES.names() if name in BUILT_IN])
def test_every_registered_defense_has_a_claims_entry(name):
    claim = claim_for(name, LEDGER)
    assert claim is not None, f"no claims file for registered defense {name!r} in {CLAIMS_DIR}"
    assert claim.defense == name


@pytest.mark.parametrize("name", sorted(LEDGER))
def test_every_entry_and_item_quotes_a_primary_source_and_says_where_it_was_read(name):
    claim = LEDGER[name]
    assert claim.source and claim.read_at and len(claim.quote.split()) >= 5, f"{name}: the headline needs its quote"
    if claim.arxiv and claim.claim is not None:  # a paper's claim is quoted from that paper
        assert claim.source.startswith(f"arXiv {claim.arxiv}, "), f"{name}: {claim.source}"
    for item in claim.items:
        assert item.kind in KINDS and item.source and item.read_at and len(item.quote.split()) >= 5, (name, item)
        assert item.verified or item.note, f"{name}: an unverified item says what could not be checked"


def _entry(items: str = "[]", claim: str = '"It resists."') -> dict:
    import yaml

    return yaml.safe_load(f"""defense: mine
paper: "Someone et al. 2025"
arxiv: "2501.00001"
claim: {claim}
setting: "Tiny models."
source: "arXiv 2501.00001, Abstract"
quote: "Our defense resists fine-tuning for a long time."
read_at: "https://arxiv.org/abs/2501.00001"
items: {items}
""")


def _item(kind: str, *, verified: bool = True, variant: str | None = None) -> str:
    extra = ("" if verified else ', verified: false, note: "not read"') + (f', variant: "{variant}"' if variant else "")
    return (f'{{kind: {kind}, summary: "s", source: "owner/repo PR #1", quote: "a quoted sentence of five words",'
            f' read_at: "https://github.com/owner/repo/pull/1"{extra}}}')


@pytest.mark.parametrize("items, status", [
    ([], "no known break"),
    ([_item("break")], "broken by 1"),
    ([_item("break"), _item("break"), _item("validation")], "broken by 2, validated by 1"),
    ([_item("validation")], "no known break, validated by 1"),
    ([_item("reproduction-failure"), _item("own-limitation"), _item("own-limitation")],
     "no known break, 1 failed reproduction, 2 own limitations"),
    # neither an unverified item nor one about another method counts
    ([_item("break", verified=False), _item("validation", variant="T-Vaccine")], "no known break"),
])
def test_the_status_is_computed_from_the_counted_items_kinds(items, status):
    claim = parse_claim(_entry("[" + ", ".join(items) + "]"), "mine.yaml")
    assert claim_status(claim) == status
    assert claim.known_broken == status.startswith("broken by")


def test_an_entry_without_a_claim_says_so_and_cannot_be_broken():
    assert claim_status(parse_claim(_entry(claim="null", items=f"[{_item('own-limitation')}]"), "x.yaml")) == "no claim"
    with pytest.raises(ConfigError, match="without a claim .* cannot be broken"):
        parse_claim(_entry(claim="null", items=f"[{_item('break')}]"), "x.yaml")


def test_the_built_in_ledger_says_what_its_sources_support():
    status = {name: claim_status(claim) for name, claim in LEDGER.items()}
    # reproductions that confirm a claim are validations, not breaks (TamperBench PR #52 for Booster; PR #109's
    # sweep, whose defense list names Booster, is its break) ...
    assert status["booster"] == "broken by 1, validated by 1"
    # ... and one of a different method (PR #100: T-Vaccine) is shown but counts for neither
    vaccine = {item.source: item for item in LEDGER["vaccine"].items}
    assert vaccine["criticalml-uw/TamperBench PR #100"].kind == "validation"
    assert vaccine["criticalml-uw/TamperBench PR #100"].variant and status["vaccine"] == "no known break"
    assert "criticalml-uw/TamperBench PR #109" not in vaccine  # its sweep's defense list has no Vaccine
    # a paper's own theorem or caveat is an own limitation, never an external break
    assert status["specdef"] == "no known break, 1 own limitation"
    assert {i.kind for i in LEDGER["repnoise"].items if i.source.startswith("domenicrosati/")} == {"own-limitation"}
    # a break needs a source: the unsourced ones are gone; the control, the baseline and the ablation claim nothing
    assert status["npo"] == "no known break" and status["rmu"] == "broken by 1"
    assert status["ga-retain"] == status["none"] == status["specdef-nocomp"] == "no claim"
    # TAR's PR #44 (a utility measurement) is no item; PR #113 is a failed reproduction
    tar = {item.source: item.kind for item in LEDGER["tar"].items}
    assert "criticalml-uw/TamperBench PR #44" not in tar
    assert tar["criticalml-uw/TamperBench PR #113"] == "reproduction-failure"


def test_claims_ledger_lookup_by_board_label():
    assert claim_for("tar.sophon(adversary=sgd,subsample=1)", LEDGER).defense == "sophon"
    assert claim_for("specdef(alpha=1e+06)", LEDGER).defense == "specdef"
    assert claim_key("none+specdef(alpha=1e+06)") is None and claim_key("tar(note=a+b)") == "tar"
    assert claim_for("my-defense", LEDGER) is None
    # a tuned preset answers to what it tuned, not to the method it is a preset of
    assert claim_for("tar.sophon-tuned-vision-digits", LEDGER).defense == "sophon"
    assert claim_for("tar.tuned-vision-digits", LEDGER).defense == "tar"


def test_sources_link_to_their_pages():
    assert source_url("arXiv 2409.18025, Abstract") == "https://arxiv.org/abs/2409.18025"
    assert source_url("criticalml-uw/TamperBench PR #52") == "https://github.com/criticalml-uw/TamperBench/pull/52"
    assert source_url("a/b issue #3") == "https://github.com/a/b/issues/3"
    assert source_url("a/b:README.md") == "https://github.com/a/b/blob/HEAD/README.md"
    assert source_url("harness:defenses/none.py") is None


def test_the_markdown_ledger_shows_status_quotes_and_uncounted_items():
    text = claims_markdown(["vaccine", "tar.sophon", "none"], LEDGER)
    assert "- **vaccine** (" in text and "_no known break_" in text and "- **none** (" in text
    assert "validation (about T-Vaccine" in text and "not counted" in text and "unverified" in text
    assert f'"{" ".join(LEDGER["sophon"].quote.split())}" (arXiv 2404.12699, Abstract)' in text


def test_claims_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "claims/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["leaderboard"]


GOOD = """defense: mine
paper: "Someone et al. 2025"
arxiv: "2501.00001"
claim: "It resists."
setting: "Tiny models."
source: "arXiv 2501.00001, Table 2"
quote: "Our defense resists fine-tuning for a long time."
read_at: "https://arxiv.org/abs/2501.00001"
measured_metric: worst_median
items:
  - kind: break
    summary: "Someone broke it."
    source: "owner/repo PR #7"
    quote: "We broke it with one learning rate."
    read_at: "https://github.com/owner/repo/pull/7"
"""


@pytest.mark.parametrize("change, message", [
    (("measured_metric: worst_median", "measured_metric: worst_median\nnotes: x"), "unknown key 'notes'"),
    (('arxiv: "2501.00001"', "arxiv: 2501.00001"), "arxiv must be a string or null, got float 2501.00001 (quote it"),
    (("defense: mine", "defense: other"), "defense is 'other' but the file is named after 'mine'"),
    (("    read_at: \"https", "    where: x\n    read_at: \"https"), "(mine): items[0]: unknown key 'where'"),
    (("  - kind: break", "  - kind: debunk"), "(mine): items[0]: kind 'debunk' is not one of break, validation"),
    (('source: "owner/repo PR #7"', 'source: "BASELINES.md"'), "items[0]: source 'BASELINES.md' is not a primary"),
    (('source: "arXiv 2501.00001, Table 2"', 'source: "arXiv 2501.00001"'), "(mine): source 'arXiv 2501.00001' is"),
    (('    read_at: "https://github.com/owner/repo/pull/7"\n', '    read_at: "x"\n    verified: false\n'),
     "items[0]: an unverified item needs a note"),
    (('    quote: "We broke it with one learning rate."\n', ""), "items[0]: missing key 'quote'"),
    (('quote: "Our defense resists fine-tuning for a long time."\n', ""), "source and quote go together"),
    (('claim: "It resists."\n', ""), "missing key 'claim'"),
    (("items:", "items: [unclosed\nx:"), "not valid YAML"),
])
def test_a_malformed_claims_file_is_a_clear_error(tmp_path, change, message):
    assert change[0] in GOOD
    (tmp_path / "mine.yaml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_claims(tmp_path)
    assert message in str(err.value) and "mine.yaml" in str(err.value) and "\n" not in str(err.value)


def test_every_problem_of_a_claims_file_is_reported_at_once(tmp_path):
    bad = (GOOD.replace("measured_metric: worst_median", "measured_metric: worst_median\nnotes: x")
           .replace('arxiv: "2501.00001"', "arxiv: 2501.00001").replace("  - kind: break", "  - kind: debunk")
           .replace('claim: "It resists."\n', ""))
    (tmp_path / "mine.yaml").write_text(bad)
    with pytest.raises(ConfigError) as err:
        load_claims(tmp_path)
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and all("mine.yaml (mine): " in line for line in lines)
    assert any("unknown key 'notes'" in line for line in lines)
    assert any("arxiv must be a string or null" in line for line in lines)
    assert any("missing key 'claim'" in line for line in lines)
    assert any("items[0]: kind 'debunk' is not one of" in line for line in lines)


def test_a_wellformed_claims_file_loads_and_a_contribution_needs_no_items(tmp_path):
    (tmp_path / "mine.yaml").write_text(GOOD)
    assert claim_status(load_claims(tmp_path)["mine"]) == "broken by 1"
    (tmp_path / "mine.yaml").write_text('defense: mine\npaper: "Me 2026"\nclaim: "It resists."\nsetting: "tiny"\n')
    assert claim_status(load_claims(tmp_path)["mine"]) == "no known break"


def test_a_submitted_claims_file_is_checked_as_the_ledger_checks_its_own(tmp_path):
    from bench.apps.submit import _invalid_claims

    path = tmp_path / "mine.yaml"
    path.write_text('defense: mine\npaper: "Me 2026"\nclaim: "It resists."\nsetting: "tiny"\n')
    assert _invalid_claims(path, "mine") == []
    assert _invalid_claims(path, "other") == ["defense is 'mine', not 'other'"]
    path.write_text('defense: mine\npapr: "Me 2026"\nclaim: 3\nsetting: "tiny"\n')
    problems = _invalid_claims(path, "mine")
    assert len(problems) == 3, problems  # every problem, each without the path (submit prefixes it)
    assert any("unknown key 'papr'. Did you mean 'paper'?" in p for p in problems)
    assert any("missing key 'paper'" in p for p in problems)
    assert any("claim must be a string or null, got int 3" in p for p in problems)
    assert not any(str(path) in p for p in problems)
