"""One self-contained HTML page: inline CSS, figures as base64 PNG, no script or style from elsewhere.

A small inline script records, once the page has loaded, how many ``<img>`` decoded (``naturalWidth > 0``)
and how many errors happened (script errors, failed resources, ``console.error`` calls), as ``data-*``
attributes on ``<body>`` — what the browser test reads.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from modeldoctor.report.figures import Figure

NUMBER = re.compile(r"^[+\-−]?[\d.]+(e[+-]?\d+)?%?( ± [\d.]+)?$")
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:0 auto;padding:1.5em;
color:#222;line-height:1.45;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h3{font-size:1.02em;margin:1.2em 0 .3em}
.lead{color:#555;margin-top:0}.summary{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em;background:#fafafa}
.card b{display:block;font-size:1.35em}.card span{color:#555;font-size:.85em}
figure{margin:1em 0 1.6em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.9em;margin-top:.3em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td,th{text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
nav ul{columns:2;padding-left:1.2em}code{background:#f3f3f3;padding:0 .2em}.note{color:#666;font-size:.88em}
"""

STATUS_SCRIPT = """
window.__errors = 0;
window.addEventListener('error', function () { window.__errors += 1; }, true);
(function () {
  var original = console.error;
  console.error = function () { window.__errors += 1; return original.apply(console, arguments); };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-errors', String(window.__errors));
  document.body.setAttribute('data-status', 'loaded');
});
"""


@dataclass
class Section:
    """A report section: ``key`` is its HTML id (the tests look for it), ``intro`` plain text."""

    key: str
    heading: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML fragments from :func:`table`
    notes: list[str] = field(default_factory=list)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], caption: str = "") -> str:
    """An HTML table; cells that read as numbers are right-aligned, floats shown with 4 significant digits."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption class='note'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, lead: str, cards: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """The whole page; ``cards`` are (value, label) pairs shown at the top."""
    toc = "".join(f"<li><a href='#{s.key}'>{html.escape(s.heading)}</a></li>" for s in sections)
    card_html = "".join(f"<div class='card'><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
                        for v, k in cards)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{STATUS_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='lead'>{html.escape(lead)}</p>",
        f"<div class='summary'>{card_html}</div>" if cards else "",
        f"<nav><ul>{toc}</ul></nav>" if sections else "<p>No modeldoctor outputs were found.</p>",
    ]
    parts += [_section(s) for s in sections]
    parts.append("</body></html>")
    return "\n".join(parts)


def _section(s: Section) -> str:
    out = [f"<section id='{s.key}'><h2>{html.escape(s.heading)}</h2>"]
    if s.intro:
        out.append(f"<p>{html.escape(s.intro)}</p>")
    for f in s.figures:
        data = base64.b64encode(f.png).decode("ascii")
        out.append(f"<figure id='fig-{html.escape(f.name)}'><h3>{html.escape(f.title)}</h3>"
                   f"<img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>"
                   f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    out += s.tables
    out += [f"<p class='note'>{html.escape(n)}</p>" for n in s.notes]
    out.append("</section>")
    return "\n".join(out)


def _cell(value: object) -> str:
    text = _fmt(value)
    numeric = bool(NUMBER.match(text))
    return f"<td class='num'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
