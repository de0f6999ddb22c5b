"""The static leaderboard site (`bench leaderboard --format html`) on a small hand-written results folder: pages and
links, escaping of user strings, failed runs shown, the other formats; and the site in a real browser (headless
Chromium over the DevTools protocol): screenshots, a header click that sorts, the filter box, the details toggle,
no console errors."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.run import results

EVIL = "<script>alert(1)</script>"
LONG_ATTACK = "full-ft(lr=0.0001,optimizer=adamw,weight_decay=0.01)"


def write_run(results_dir: Path, *, task, defense, attack, seed=0, steps=None, censored=False, knowledge="blind",
              status="success", error=None, harm=(0.0, 0.5, 1.0), kl=0.01, retained=1.0):
    """One run as `bench run` writes it (run.json and metrics.parquet), reduced to what the leaderboard reads."""
    run_id = re.sub(r"[^a-z0-9]+", "-", f"{task}-{defense}-{attack}-{seed}".lower()).strip("-")
    columns = {"run_id": run_id, "task": task, "tier": "tiny", "model": None, "defense": defense,
               "defense_label": defense, "defense_hash": defense, "attack": attack.split("(")[0],
               "attack_label": attack, "attack_family": "adam", "attack_hash": attack, "knowledge": knowledge,
               "purpose": "attack", "seed": seed, "status": status, "official": True,
               "outcome": None if status != "success" else ("resisted" if censored else "harmed"), "diverged": False}
    rows = [results.metric_row("summary", "wall_seconds", 1.0)]
    if status == "success":
        rows += [results.metric_row("summary", "steps_to_harm", steps, censored=censored),
                 results.metric_row("summary", "harm_auc", sum(harm) / len(harm)),
                 results.metric_row("defended", "mean_kl", kl, split="benign"),
                 results.metric_row("defended", "retained_utility", retained, split="accuracy", ci=(retained - 0.01, retained))]
        rows += [results.metric_row("attack", "harm", h, step=5 * i) for i, h in enumerate(harm)]
    run_json = {"run_id": run_id, "status": status, "error": error, "device": "cpu", "started_at": "2026-01-01T00:00:00",
                "spec": {"defense": {"name": defense, "preset": None, "args": {"note": "<b>bold</b>"}}},
                "provenance": {"git_sha": "abc123", "git_dirty": False, "bench_version": "0.1.0",
                               "libraries": {"torch": "2.13.0"}}}
    results.write_run(results_dir / run_id, run_json, results.to_table(columns, rows))
    return run_id


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    # vision-like: four defenses, listed by worst case (specdef, evil, none, weak), which is not alphabetical
    for defense, blind, adaptive in [("none", 10, 15), ("specdef", 40, 35), (EVIL, 30, 25), ("weak", 5, 5)]:
        write_run(root, task="vision-like", defense=defense, attack=LONG_ATTACK, steps=blind)
        write_run(root, task="vision-like", defense=defense, attack="adaptive-collapse(optimizer=adamw)",
                  steps=adaptive, knowledge="white-box")
    write_run(root, task="vision-like", defense="specdef", attack="lora", status="failed",
              error="RuntimeError: out of memory <img src=x onerror=alert(2)>\ntraceback line")
    write_run(root, task="sd-like", defense="none", attack="full-ft", steps=20, kl=0.0)
    write_run(root, task="sd-like", defense="specdef", attack="full-ft", steps=60, censored=True, retained=0.9)
    return root


@pytest.fixture(scope="module")
def site(results_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert main(["leaderboard", "--results", str(results_dir), "--out", str(out)]) == 0
    return out


class Links(HTMLParser):
    """The href/src attributes and script tags of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append((tag, attrs[name]))
        if tag == "script":
            self.scripts.append(attrs.get("src"))


def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_site_has_every_page_and_every_link_resolves_locally(site):
    pages = sorted(p.name for p in site.glob("*.html"))
    assert "index.html" in pages
    assert sum(p.startswith("task-") for p in pages) == 2
    assert sum(p.startswith("defense-") for p in pages) == 4  # none, specdef, weak and the evil label
    assert all(re.fullmatch(r"[a-z0-9-]+\.html", p) for p in pages)  # safe names, whatever the label
    for page in site.glob("*.html"):
        parsed = parse(page)
        assert parsed.scripts == ["assets/site.js"], page.name  # one local script, no inline or CDN code
        for tag, link in parsed.links:
            if link.startswith("https://arxiv.org/") and tag == "a":
                continue  # a reference the reader may follow; nothing is loaded from the network
            assert not link.startswith(("http:", "https:", "//")), (page.name, link)
            if link.startswith("data:"):
                continue
            assert (site / link.split("#")[0]).is_file(), (page.name, link)
    index = (site / "index.html").read_text()
    assert "sd-like" in index and "vision-like" in index and "leaderboard.csv" in index
    assert pd.read_csv(site / "leaderboard.csv")["defense_label"].nunique() == 4


def test_user_strings_render_as_text(site):
    for page in site.glob("*.html"):
        text = page.read_text()
        assert EVIL not in text and "<img src=x" not in text and "<b>bold</b>" not in text, page.name
    evil_page = next(site.glob("defense-script-alert-1-script-*.html")).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in evil_page
    assert "&lt;b&gt;bold&lt;/b&gt;" in evil_page  # a config value


def test_failed_runs_are_shown_with_their_error(site):
    task_page = next(site.glob("task-vision-like-*.html")).read_text()
    assert "Failed runs (1)" in task_page and "vision-like-specdef-lora-0" in task_page
    assert "RuntimeError: out of memory &lt;img src=x onerror=alert(2)&gt;" in task_page
    specdef = next(site.glob("defense-specdef-*.html")).read_text()
    assert "class='failed'" in specdef and "1 failed" in specdef


def test_defense_page_shows_the_claim_beside_what_was_measured(site):
    from leaderboard.claims import load_claims

    claim = load_claims()["specdef"]
    specdef = next(site.glob("defense-specdef-*.html")).read_text()
    assert claim.paper.split(",")[0] in specdef and "no known break, 1 own limitation" in specdef
    assert "own-limitation</strong>" in specdef and "href='https://arxiv.org/abs/2602.18868'" in specdef
    assert "measured here: Worst-case steps-to-harm" in specdef and "sd-like (tiny): &gt; 60; vision-like (tiny): 35" in specdef
    assert "No claims-ledger entry" in next(site.glob("defense-weak-*.html")).read_text()  # a plugin: no entry
    assert "no known break, 1 own limitation" in (site / "index.html").read_text()  # the overview's claim column


def test_long_attack_labels_are_abbreviated_with_the_full_text_in_a_tooltip(site):
    task_page = next(site.glob("task-vision-like-*.html")).read_text()
    assert f"title='{LONG_ATTACK}'" in task_page and ">full-ft(lr=0.0001,adamw,wd=0.01)<" in task_page


def test_other_formats_and_the_default_folder(results_dir, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(results_dir, copy)
    assert main(["leaderboard", "--results", str(copy)]) == 0
    assert (copy / "site" / "index.html").is_file()
    assert "| Defense | Worst-case steps-to-harm |" in capsys.readouterr().out
    assert main(["leaderboard", "--results", str(copy), "--format", "md", "--details", "--out", str(tmp_path / "b.md")]) == 0
    board_md = (tmp_path / "b.md").read_text()
    assert "| KL |" in board_md
    overview = board_md.split("### Overview\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert overview[0] == "| Defense | Paper's claim | Worst ratio | sd-like (1 seed) | vision-like (1 seed) |"
    assert len(overview) == 2 + 4
    one = " (1 seed: no interval, no verdict)"  # every task ran one seed: no interval, so no gain or loss is claimed
    assert (f"| specdef | no known break, 1 own limitation | ≥ 3×{one} | ≥ 3×{one} · > 60 · 0.900 | "
            f"3.5×{one} · 35 · 1.000 |") in overview
    assert f"| &lt;script>alert(1)&lt;/script> | — | 2.5×{one} | — | 2.5×{one} · 25 · 1.000 |" in overview  # no tag
    assert "<script>" not in board_md
    figures = tmp_path / "b-figures"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", board_md)
    assert images and all((tmp_path / image).is_file() for image in images)  # every linked figure was written
    assert {p.name for p in figures.glob("*.png")} == {Path(i).name for i in images}
    assert any("pareto" in i for i in images) and any("forest" in i for i in images)
    assert "Markers: 1 = specdef; 2 = &lt;script>" in board_md
    for fmt in ("csv", "parquet"):
        assert main(["leaderboard", "--results", str(copy), "--format", fmt]) == 0
    assert set(pd.read_parquet(copy / "leaderboard.parquet")["task"]) == {"vision-like", "sd-like"}
    assert len(pd.read_csv(copy / "leaderboard.csv")) == 6
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(copy), "--html", str(tmp_path / "x.html")]) == 2
    assert "--format html --out DIR" in capsys.readouterr().err


@pytest.mark.parametrize("ratios, expected", [
    ([(2.0, False, False), (4.0, True, False)], (2.0, False, False)),  # ≥ 4 cannot be below 2
    ([(2.0, True, False), (4.0, True, False)], (2.0, True, False)),    # both bounds: the minimum is ≥ 2
    ([(1.5, True, False), (2.0, False, False)], (1.5, True, False)),   # somewhere in [1.5, 2]: at least 1.5
    ([(0.5, False, True), (4.0, True, False)], (0.5, False, True)),    # ≤ 0.5 decides
    ([(3.0, True, True)], (0.0, True, True)),                          # undetermined stays undetermined
])
def test_the_overview_ranks_by_the_worst_censored_ratio(ratios, expected):
    from leaderboard.overview import worst_ratio

    assert worst_ratio(ratios) == expected


# --- the site in a real browser -------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe: JSON messages
    separated by NUL bytes on file descriptors 3 and 4), so the test needs no websocket library."""

    def __init__(self, profile: Path, width: int = 1366, height: int = 900):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def descriptors():
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [shutil.which("chromium"), "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=descriptors, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._events, self._next_id = b"", [], 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, timeout: float = 15.0, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def open(self, url: str, timeout: float = 15.0) -> None:
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            event = self._message(deadline)
            self._events.append(event)
            if event.get("method") == "Page.javascriptDialogOpening":  # recorded by errors(); let the page go on
                self.call("Page.handleJavaScriptDialog", session=True, accept=True)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, element: str) -> None:
        """A real mouse click (pressed and released) at the middle of ``element`` (a JavaScript expression)."""
        box = self.evaluate(f"(() => {{ const r = ({element}).getBoundingClientRect();"
                            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        assert box[0] > 0 and box[1] > 0, f"{element} is not visible"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])
        path.write_bytes(data)
        return data

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and browser log errors (e.g. a file that failed to load)."""
        found = []
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":  # an alert() that a user string smuggled in
                found.append(f"dialog: {params.get('message')}")
        return found

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        os.close(self._write)
        os.close(self._read)


FIRST_COLUMN = "[...document.querySelectorAll('#board tbody tr')].map(r => r.cells[0].dataset.text)"


def header(text: str) -> str:
    """The board's header cell whose text starts with ``text``."""
    return f"[...document.querySelectorAll('#board thead th')].find(th => th.textContent.startsWith({json.dumps(text)}))"


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Chromium is not installed (Debian: apt-get install chromium); the browser test needs it")
def test_site_in_a_real_browser_sorts_filters_and_logs_no_errors(site, tmp_path):
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open((site / "index.html").as_uri())
        assert browser.screenshot(tmp_path / "overview.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert browser.evaluate("document.querySelectorAll('#overview tbody tr').length") == 4
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits 1366 px

        task_page = next(site.glob("task-vision-like-*.html"))
        browser.open(task_page.as_uri())
        assert browser.evaluate("document.querySelectorAll('img').length") >= 2  # harm curves and the Pareto plot
        assert browser.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        before = browser.evaluate(FIRST_COLUMN)
        assert before == ["specdef", EVIL, "none", "weak"]  # the schema's order: worst case, best first
        browser.click(header("Defense"))  # A to Z
        after = browser.evaluate(FIRST_COLUMN)
        assert after == sorted(before, key=str.lower) and after != before
        browser.click(header("Defense"))  # again: Z to A
        assert browser.evaluate(FIRST_COLUMN) == sorted(before, key=str.lower, reverse=True)
        browser.click(header("Worst-case steps-to-harm"))  # more is better, so most first
        assert browser.evaluate(FIRST_COLUMN) == ["specdef", EVIL, "none", "weak"]

        browser.call("Runtime.evaluate", session=True, expression="document.querySelector('input.filter').focus()")
        browser.call("Input.insertText", session=True, text="spec")
        assert browser.evaluate("[...document.querySelectorAll('#board tbody tr')].filter(r => !r.hidden)"
                                ".map(r => r.cells[0].dataset.text)") == ["specdef"]
        folded = "getComputedStyle(document.querySelector('#board th.fold')).display"
        assert browser.evaluate(folded) == "none"
        browser.click("document.querySelector('button.details-toggle')")
        assert browser.evaluate(folded) == "table-cell"
        browser.screenshot(tmp_path / "task.png")

        evil_page = next(site.glob("defense-script-alert-1-script-*.html"))
        browser.open(evil_page.as_uri())
        assert browser.evaluate("document.querySelector('h1').textContent") == EVIL  # shown as text, never run
        assert browser.errors() == []
    finally:
        browser.close()
