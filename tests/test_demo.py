"""The demo end to end in its CI-sized form: baseline, diagnosis, annotation list, treatment vs control, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeldoctor import cli
from modeldoctor.core.files import read_json


@pytest.mark.slow
def test_quick_demo_writes_the_report_and_the_three_models(tmp_path: Path, capsys) -> None:
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for arm in ("original", "control", "treated"):
        for split in ("val", "test"):
            m = result[arm][split]
            assert 0.0 <= m["accuracy"] <= 1.0 and len(m["per_class"]) == 10
    assert result["annotated"] == 150 and result["held_out"] == 50  # 20 masks per class: 15 train, 5 measure swap
    assert read_json(tmp_path / "demo" / "treat" / "treat.json")["treated"] == result["treated"]
    html = Path(result["html"])
    page = html.read_text()
    for key in ("discovery", "attention", "annotate", "treatment", "before-after"):
        assert f"<section id='{key}'>" in page, key
    assert "background" in page and "data:image/png;base64," in page
    assert len(list((html.parent / "figures").glob("*.png"))) == page.count("<img")
    annotate = read_json(tmp_path / "demo" / "diagnosis" / "annotate.json")["per_class"]
    assert sorted(annotate) == [str(d) for d in range(10)] and all(len(v) == 20 for v in annotate.values())
