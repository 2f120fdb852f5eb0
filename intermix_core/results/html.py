"""HTML building blocks of the grid report (`report.html`): one self-contained page, no script, no network.

Only markup: `intermix_core.results.tables` decides what the page says. Images are inlined as
`data:` URIs and the style sheet is in the page, so the file opens anywhere, offline, on its own
(mailed, downloaded from MLflow or the store, opened from a laptop).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; } .warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.6em 0.9em; }
.bad { background: #fdecea; border-left: 4px solid #d93025; padding: 0.6em 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
tr.called td { background: #eef7ee; }
ul.notes { color: #444; font-size: 0.92em; } code, pre { font: 12.5px ui-monospace, monospace; }
pre { background: #f6f6f6; padding: 0.5em 0.7em; overflow-x: auto; margin: 0.2em 0 0.8em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.92em; } img { max-width: 100%; height: auto; }
nav a { margin-right: 1em; }
"""


def esc(text: object) -> str:
    """Text escaped for HTML."""
    return html.escape(str(text), quote=True)


def table(table_id: str, title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str],
          row_classes: Sequence[str] | None = None) -> str:
    """A titled table section with its notes as a list; `row_classes` marks rows (e.g. 'called')."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{esc(x)}</td>" for x in row)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    notes_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (f'<section id="{esc(table_id)}"><h2>{esc(title)}</h2><div class="scroll"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            + (f'<ul class="notes">{notes_html}</ul>' if notes else "") + "</section>")


def image(png: bytes | Path, alt: str, caption: str = "") -> str:
    """A figure with the PNG inlined as a data: URI."""
    data = png.read_bytes() if isinstance(png, Path) else png
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def paragraph(text: str, cls: str = "") -> str:
    """A paragraph of plain text, optionally with a class (warn, bad, meta)."""
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def commands(items: Sequence[tuple[str, str]]) -> str:
    """A list of (what, shell command) pairs, each command in its own copyable block (none where it is empty)."""
    return "".join(f"<div>{esc(what)}</div>" + (f"<pre>{esc(cmd)}</pre>" if cmd else "") for what, cmd in items)


def page(title: str, sections: Sequence[str], nav: Sequence[tuple[str, str]] = ()) -> str:
    """The whole document: title, a navigation line of (anchor, label), the sections; styles inline, no script."""
    links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>" + (f"<nav>{links}</nav>" if links else "") + "".join(sections) + "</body></html>\n")
