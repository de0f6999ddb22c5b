"""Every user string on the leaderboard site is escaped by the templates: a defense name, an attack config, a task
name, an error message, a config value and a claims-ledger entry each carrying markup appear on every page as text,
never as a tag or an attribute; and nothing in the site's code marks a string safe."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import yaml
from test_site import write_run

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'
QUOTES = "a' onmouseover='alert(2)"


class Page(HTMLParser):
    """The tags, attributes and text of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_markup_in_every_user_string_is_text_on_every_page(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for defense, steps in [("none", 10), (f"evil{SCRIPT}", 30), ("specdef", 40)]:
        write_run(results, task=f"task{IMG}", defense=defense, attack=f"full-ft(lr=0.001,note={QUOTES})", steps=steps)
    write_run(results, task=f"task{IMG}", defense="specdef", attack="lora", status="failed",
              error=f"RuntimeError: {IMG} {SCRIPT}\ntraceback")
    ledger = tmp_path / "claims"  # the ledger, with markup in the paper, claim, quote and an item
    ledger.mkdir()
    entry = {"defense": "specdef", "paper": f"Paper {SCRIPT}", "arxiv": "2602.18868", "claim": f"It resists {IMG}",
             "setting": QUOTES, "source": "arXiv 2602.18868, Abstract", "quote": f"a quoted sentence {SCRIPT}",
             "read_at": f"https://arxiv.org/abs/{QUOTES}",
             "items": [{"kind": "break", "summary": f"broken {SCRIPT}", "source": "owner/repo PR #1",
                        "quote": f"five words quoted {IMG}", "read_at": "x", "verified": False, "note": SCRIPT}]}
    (ledger / "specdef.yaml").write_text(yaml.safe_dump(entry))
    monkeypatch.setattr("leaderboard.claims.CLAIMS_DIR", ledger)
    out = tmp_path / "site"
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0

    pages = sorted(out.glob("*.html"))
    defense_page = next(p for p in pages if p.name.startswith("defense-specdef"))
    assert len(pages) >= 5
    for path in pages:
        page = _parse(path)
        scripts = [attrs.get("src") for tag, attrs in page.tags if tag == "script"]
        assert scripts == ["assets/site.js"], (path.name, scripts)  # the site's own script, nothing injected
        images = [attrs for tag, attrs in page.tags if tag == "img"]
        assert all(a.get("src", "").startswith("img/") and "onerror" not in a for a in images), (path.name, images)
        handlers = [(tag, name) for tag, attrs in page.tags for name in attrs if name.startswith("on")]
        assert handlers == [], (path.name, handlers)
        text = "".join(page.text)
        assert f"task{IMG}" in text, path.name  # every page's navigation names the task, as text
    text = "".join(_parse(defense_page).text)
    for shown in (f"Paper {SCRIPT}", f"It resists {IMG}", QUOTES, f"broken {SCRIPT}", f"five words quoted {IMG}",
                  "RuntimeError: " + IMG):
        assert shown in text, shown
    evil = next(p for p in pages if p.name.startswith("defense-evil"))
    assert f"evil{SCRIPT}" in "".join(_parse(evil).text)


def test_nothing_marks_a_string_safe():
    sources = [*(ROOT / "leaderboard" / "templates").glob("*.html"), *(ROOT / "leaderboard").glob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\|\s*safe\b|Markup\(|autoescape\s+false|autoescape=False", text), path.name
    from leaderboard.html import _environment

    assert _environment().autoescape is True
