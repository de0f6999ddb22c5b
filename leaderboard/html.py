"""HTML building blocks of the leaderboard site: the page frame, sortable and filterable tables, abbreviated labels
with their full text in a tooltip, and safe file names. Every string that reaches a page goes through
:func:`html.escape` here (labels, config values and error texts come from users' plugins and results)."""

from __future__ import annotations

import hashlib
import re
from html import escape
from typing import Callable, Sequence
from urllib.parse import quote

import pandas as pd

from leaderboard.formats import isnan
from leaderboard.render import Column

ASSETS = ("site.css", "site.js")


def esc(value) -> str:
    """``value`` as HTML text or attribute content (quotes escaped too)."""
    return escape(str(value), quote=True)


def slug(text: str, prefix: str) -> str:
    """A safe, unique file-name stem for ``text``: readable letters plus a hash of the full text, so that labels
    differing only in punctuation or case never share a file."""
    readable = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40] or "x"
    return f"{prefix}-{readable}-{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"


def href(path: str) -> str:
    """A relative link to a file of the site, percent-encoded and attribute-escaped."""
    return esc(quote(path))


def abbreviate(label: str, limit: int = 32) -> str:
    """A short form of a plugin label such as ``full-ft(lr=0.0001,optimizer=adamw,weight_decay=0.01)``: the
    optimizer by its value, multi-word keys by their initials (``wd=0.01``), then cut to ``limit`` characters."""
    label = str(label)
    name, paren, args = label.partition("(")
    short = label
    if paren and args.endswith(")"):
        parts = []
        for item in args[:-1].split(","):
            key, eq, value = item.partition("=")
            if eq and key == "optimizer":
                parts.append(value)
            elif eq and "_" in key:
                parts.append("".join(word[:1] for word in key.split("_")) + "=" + value)
            else:
                parts.append(item)
        short = f"{name}({','.join(parts)})"
    return short if len(short) <= limit else short[: limit - 1] + "…"


def short_label(label: str, limit: int = 32, link: str | None = None) -> str:
    """``label`` abbreviated, the full text in a tooltip when it was cut, optionally linked."""
    label = str(label)
    short = abbreviate(label, limit)
    title = f" title='{esc(label)}'" if short != label else ""
    text = f"<span{title}>{esc(short)}</span>"
    return f"<a href='{href(link)}'>{text}</a>" if link else text


def page(title: str, body: str, *, nav: Sequence[tuple[str, str]], current: str = "", footer: str = "") -> str:
    """A complete page: the navigation bar (``nav``: (label, file) pairs), ``body`` and ``footer`` (HTML, already
    escaped by the caller), the site's stylesheet and script (local files: nothing is fetched from the network)."""
    links = "".join(f"<a href='{href(file)}'{' aria-current=page' if file == current else ''}>{esc(label)}</a>"
                    for label, file in nav)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><link rel='icon' href='data:,'>"
            "<link rel='stylesheet' href='assets/site.css'></head><body>"
            f"<header><nav>{links}</nav></header><main>{body}"
            f"{f'<p class=note>{footer}</p>' if footer else ''}</main>"
            "<script src='assets/site.js'></script></body></html>\n")


_TEXT_FORMATS = {"text", "defense", "attack"}


def table(table_id: str, cols: Sequence[Column], rows: pd.DataFrame, *, links: Callable[[str], str | None] = lambda _: None,
          row_class: Callable[[pd.Series], str] = lambda _: "", filter_box: bool = True, wrap: Sequence[str] = ()) -> str:
    """A sortable table of ``rows`` in ``cols``, with a filter box and a details toggle for folded columns.

    ``links`` maps a defense label to its page; ``row_class`` gives a row's CSS class (e.g. ``failed``); ``wrap``
    names keys whose long text may wrap (error messages).
    """
    n_fold = sum(c.fold for c in cols)
    controls = []
    if filter_box:
        controls.append(f"<input type='search' class='filter' data-for='{esc(table_id)}' placeholder='filter rows…' "
                        f"aria-label='filter rows'><span class='count' id='{esc(table_id)}-count'></span>")
    if n_fold:
        controls.append(f"<button type='button' class='details-toggle' data-for='{esc(table_id)}' "
                        f"aria-pressed='false'>show details ({n_fold} more columns)</button>")
    heads = []
    for c in cols:
        kind = "text" if c.format in _TEXT_FORMATS else "number"
        classes = " ".join(filter(None, ["text" if kind == "text" else "", "fold" if c.fold else ""]))
        heads.append(f"<th class='{classes}' data-kind='{kind}' data-better='{esc(c.direction)}' "
                     f"title='{esc(c.description)}' scope='col'>{esc(c.header)}</th>")
    body = []
    for _, row in rows.iterrows():
        cells, search = [], []
        for c in cols:
            text = c.text(row)
            search.append(str(row.get(c.key, text)) if c.format in ("text", "attack") else text)
            classes = " ".join(filter(None, ["text" if c.format in _TEXT_FORMATS else "", "fold" if c.fold else "",
                                             "wrap" if c.key in wrap else ""]))
            value = c.sort_value(row)
            data = "" if isnan(value) else f" data-v='{value!r}'"
            if c.format in ("defense", "attack") and text != c.missing:
                full = text if c.format == "defense" else str(row.get(c.key))
                content = short_label(full, link=links(full) if c.format == "defense" else None)
                data += f" data-text='{esc(full)}'"
            else:
                content = esc(text)
            cells.append(f"<td class='{classes}'{data}>{content}</td>")
        css = row_class(row)
        attributes = (f" class='{esc(css)}'" if css else "") + f" data-search='{esc(' '.join(search).lower())}'"
        body.append(f"<tr{attributes}>" + "".join(cells) + "</tr>")
    return (f"<div class='controls'>{''.join(controls)}</div>" if controls else "") + (
        f"<div class='table-wrap'><table class='sortable board' id='{esc(table_id)}'><thead><tr>{''.join(heads)}"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def key_values(pairs: Sequence[tuple[str, str, str]]) -> str:
    """A two-column table of (name, value text, tooltip) triples; every part escaped."""
    rows = "".join(f"<tr><th scope='row' title='{esc(tip)}'>{esc(name)}</th><td>{esc(value)}</td></tr>"
                   for name, value, tip in pairs)
    return f"<table class='kv'><tbody>{rows}</tbody></table>"
