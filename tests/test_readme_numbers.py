"""Every measured number in README.md and docs/ is generated from benchmarks/results/*.json.

The generator (benchmarks/readme_tables.py) is run in memory over every page; a page whose generated blocks differ
from what the JSON gives fails here, naming the page.  Fix: ``python benchmarks/readme_tables.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load_generator():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_tables"] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def block(text: str, name: str) -> str:
    m = re.search(rf"<!-- TABLE:{name} -->\n(.*?)<!-- /TABLE:{name} -->", text, re.S)
    assert m, f"no TABLE:{name} block"
    return m.group(1)


def test_readme_and_docs_agree_with_the_results_json():
    stale = gen.stale(ROOT)
    assert not stale, ("generated blocks differ from benchmarks/results/*.json in "
                       f"{sorted(str(p.relative_to(ROOT)) for p in stale)}: run python benchmarks/readme_tables.py")


def test_an_edited_number_is_caught_and_restored():
    readme = (ROOT / "README.md").read_text()
    body = block(readme, "at_a_glance")
    number = re.search(r"\d+\.\d+", body).group(0)
    edited = readme.replace(body, body.replace(number, f"{float(number) + 1:.{len(number.split('.')[1])}f}", 1))
    assert edited != readme
    assert gen.stale(ROOT) == {}  # the file itself is untouched
    assert gen.render(edited, gen.Results(RESULTS)) == readme


def test_unknown_or_unclosed_blocks_are_refused():
    with pytest.raises(ValueError, match="no generator"):
        gen.render("<!-- TABLE:nonesuch -->\nx\n<!-- /TABLE:nonesuch -->\n", gen.Results(RESULTS))
    with pytest.raises(ValueError, match="unclosed"):
        gen.render("<!-- TABLE:shortcut -->\nx\n", gen.Results(RESULTS))


def test_readme_carries_the_glance_table_and_the_treatment_placeholder():
    readme = (ROOT / "README.md").read_text()
    for name in ("at_a_glance", "treatment_matrix"):
        block(readme, name)


def test_the_known_wrong_figures_are_gone():
    """Issue 21 found these in the README; the JSON says otherwise."""
    shortcut = json.loads((RESULTS / "shortcut.json").read_text())["families"]
    text = "\n".join(p.read_text() for p in gen.pages(ROOT))
    for wrong in ("96–99%", "97.5% validation", "47 min", "but 66% swap"):
        assert wrong not in text, wrong
    swap = gen.TABLES["swap_meter"](gen.Results(RESULTS))
    clean = sorted(100 * f["clean_reference"]["swap"]["mean"] for f in shortcut.values())
    assert f"{clean[0]:.1f}–{clean[1]:.1f}%" in swap and clean[0] == pytest.approx(94.4, abs=0.05)
    border = shortcut["border-mnist"]["vanilla"]
    assert f"{100 * border['val']['mean']:.1f}% validation but {100 * border['swap']['mean']:.1f}% swap" in swap
    assert "97.4% validation but 64.0% swap" in swap
    rows = json.loads((RESULTS / "architectures.json").read_text())
    minutes = sum(r["seconds"] for r in rows) / 60  # the per-spec seconds, not a wall time read off a clock
    assert f"add up to {minutes:.0f} min" in gen.TABLES["architectures_summary"](gen.Results(RESULTS))


def test_analyses_summary_accuracy_is_that_of_the_models_behind_the_entries():
    """summary.test_accuracy was left from the first run after --only reruns retrained every model."""
    doc = json.loads((RESULTS / "analyses.json").read_text())
    # The full-layer accuracy that the decomposition measured is the test accuracy of the model it decomposed.
    full = [run["decompose"]["accuracy_full"] for run in doc["runs"]]
    assert doc["summary"]["test_accuracy"]["values"] == pytest.approx(full)


def test_every_results_file_feeds_a_table():
    seen: set[str] = set()

    class Recording(gen.Results):
        def __getitem__(self, name):
            seen.add(name)
            return super().__getitem__(name)

    results = Recording(RESULTS)
    for fn in gen.TABLES.values():
        fn(results)
    on_disk = {p.stem for p in RESULTS.glob("*.json")}
    assert on_disk <= seen, f"results without a table: {sorted(on_disk - seen)}"


def test_every_table_appears_on_a_page():
    text = "\n".join(p.read_text() for p in gen.pages(ROOT))
    missing = [name for name in gen.TABLES if f"<!-- TABLE:{name} -->" not in text]
    assert not missing, f"tables generated but on no page: {missing}"


def test_a_changed_result_makes_the_readme_stale(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text())
    results = tmp_path / "benchmarks" / "results"
    shutil.copytree(RESULTS, results)
    doc = json.loads((results / "clean.json").read_text())
    control = doc["report"]["mnist5k"]["control"]
    control["mean"] -= 0.05
    (results / "clean.json").write_text(json.dumps(doc))
    stale = gen.stale(tmp_path)
    assert list(stale) == [tmp_path / "README.md"]
    expected = f"vs {100 * control['mean']:.1f} ± {100 * control['std']:.1f}"
    assert expected in block(stale[tmp_path / "README.md"], "at_a_glance")
    assert expected not in block((ROOT / "README.md").read_text(), "at_a_glance")
