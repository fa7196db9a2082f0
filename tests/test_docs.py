"""The documentation site: every public name on the API page, every command on its own page, a strict build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modeldoctor
from modeldoctor.cli.app import build_parser, command_names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_LIMIT = 250


def test_api_page_lists_every_public_name():
    page = (DOCS / "api.md").read_text()
    documented = re.findall(r"^::: modeldoctor\.(\w+)$", page, re.M)
    missing = sorted(set(modeldoctor.__all__) - set(documented))
    assert not missing, f"docs/api.md lacks '::: modeldoctor.NAME' for {missing}"
    unknown = sorted(set(documented) - set(modeldoctor.__all__))
    assert not unknown, f"docs/api.md documents names outside modeldoctor.__all__: {unknown}"
    assert len(documented) == len(set(documented)), "a name is documented twice"


def test_every_command_has_a_page_with_a_runnable_example_and_its_help():
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in command_names():
        page = DOCS / "commands" / f"{name}.md"
        assert page.exists(), f"no docs/commands/{name}.md"
        text = page.read_text()
        examples = re.findall(r"```bash\n(.*?)```", text, re.S)
        assert any(re.search(rf"^modeldoctor {name}\b", ex, re.M) for ex in examples), \
            f"docs/commands/{name}.md has no ```bash example running `modeldoctor {name}`"
        assert f"<!-- HELP:{name} -->" in text, f"docs/commands/{name}.md lacks its generated option reference"
        assert f"commands/{name}.md" in nav, f"mkdocs.yml nav lacks commands/{name}.md"


def test_page_examples_use_options_that_exist():
    """A renamed or removed option breaks the examples on the pages, not only the code."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    pages = [ROOT / "README.md", *DOCS.rglob("*.md")]
    checked = 0
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.search(r"(?:^|-m |/)modeldoctor (\w+)(.*)", line.split("#")[0])
                if not m or m.group(1) not in sub.choices:
                    continue
                known = set(sub.choices[m.group(1)]._option_string_actions)
                used = set(re.findall(r"(?<!\S)(--[\w-]+)", m.group(2)))
                assert used <= known, f"{page.relative_to(ROOT)}: `modeldoctor {m.group(1)}` has no {used - known}"
                checked += 1
    assert checked >= 30


def test_readme_is_short_outside_tables():
    lines = (ROOT / "README.md").read_text().splitlines()
    prose = [line for line in lines if not line.startswith("|")]
    inside = False
    counted = []
    for line in prose:
        if line.startswith("<!-- TABLE:"):
            inside = True
        elif line.startswith("<!-- /TABLE:"):
            inside = False
        elif not inside:
            counted.append(line)
    assert len(counted) <= README_LIMIT, f"README.md has {len(counted)} lines outside tables (limit {README_LIMIT})"


def test_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert ("python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/modeldoctor demo --out runs/demo"
            in readme)
    assert ("python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest "
            "-m 'slow or not slow' -q" in readme)


def test_relative_links_in_the_readme_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README.md links to missing {target}"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in modeldoctor.__all__:
        assert f'id="modeldoctor.{name}"' in api, f"the built API page has no entry for {name}"
