"""MkDocs hook: ``<!-- HELP:command -->`` on a page becomes that command's ``modeldoctor COMMAND --help``.

The option reference of every command page is therefore the parser itself, never a copy that can drift.  Sphinx
roles left in docstrings (``:func:`~x.y```) are shown as plain code on the API page.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

MARK = re.compile(r"^<!-- HELP:([\w-]+) -->$", re.M)
# Sphinx roles in docstrings (:func:`~a.b.c`) arrive in the HTML as ":func:<code>~a.b.c</code>".
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):<code>(~?)([\w.]+)</code>")
SRC = Path(__file__).resolve().parent.parent / "src"


def command_help(name: str) -> str:
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal; the page must not depend on it
    from modeldoctor.cli.app import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if name not in sub.choices:
        raise ValueError(f"<!-- HELP:{name} -->: modeldoctor has no command {name!r}")
    return sub.choices[name].format_help().rstrip()


def role(m: re.Match[str]) -> str:
    return f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return ROLE.sub(role, html)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARK.sub(lambda m: f"```text\n{command_help(m.group(1))}\n```", markdown)
