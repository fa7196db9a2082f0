"""Report pieces on background reliance: headlines computed from the numbers agree with them; the treatment
section leads with treat.json's verdict and lists its candidates; the stored shortcut check is shown."""

from __future__ import annotations

from modeldoctor.report.build import treatment_section
from modeldoctor.report.reliance import headline, reliance_section, shortcut_section


def _check(swap: float, act: float, cam: float, drop: float, label: str = "reads the background") -> dict:
    row = {"objects": 2, "composites": 6, "swap_accuracy": swap, "own_accuracy": 1.0, "follows_background": 1 - swap,
           "pull": 1 - swap, "probability_drop": drop, "activation_share": act, "gradcam_share": cam}
    return {"verdict": {"label": label, "message": f"{label}: numbers", "composites": 12, "objects": 4,
                        "reads_background": label == "reads the background"},
            "overall": {k: row[k] for k in ("swap_accuracy", "own_accuracy", "follows_background", "probability_drop",
                                            "activation_share", "gradcam_share")},
            "per_class": {"a": dict(row), "b": dict(row)}, "donor_confusion": [[None, 0.9], [0.2, None]],
            "layer": "features.3", "tightness": {"note": "tight masks", "object_area": 0.1, "bbox_fill": 0.4},
            "settings": {"per_object": 3}, "split": "train"}


def _treat(original: tuple[float, float], treated: tuple[float, float]) -> dict:
    def m(test: float, swap: float) -> dict:
        return {"test": {"accuracy": test, "per_class": [test, test]}, "swap": {"accuracy": swap, "per_class": [swap] * 2},
                "val": {"accuracy": 0.9, "per_class": [0.9, 0.9]}}
    return {"original": m(*original), "control": m(*original), "treated": m(*treated), "select": "swap"}


def test_headline_says_the_treatment_moves_the_model_off_the_background_when_all_agree():
    checks = {"original": _check(0.5, 0.8, 0.7, 0.6), "control": _check(0.55, 0.78, 0.7, 0.55),
              "treated": _check(0.85, 0.4, 0.3, 0.2)}
    text = headline(checks, _treat((0.585, 0.547), (0.92, 0.847)))
    assert text.startswith("Treatment moves the model off the background")
    assert "58.5% → 92.0%" in text and "54.7% → 84.7%" in text and "Grad-CAM share outside the object 70% → 30%" in text


def test_headline_never_claims_a_move_the_numbers_do_not_show():
    same = {"original": _check(0.5, 0.8, 0.7, 0.6), "treated": _check(0.5, 0.8, 0.7, 0.6)}
    assert headline(same, _treat((0.6, 0.5), (0.6, 0.5))).startswith("Treatment moves neither")
    up_only = {"original": _check(0.5, 0.8, 0.7, 0.6), "treated": _check(0.8, 0.8, 0.75, 0.6)}
    text = headline(up_only, _treat((0.6, 0.5), (0.8, 0.8)))
    assert text.startswith("Swap accuracy rises") and "do not fall" in text and "moves the model off" not in text
    falls_only = {"original": _check(0.5, 0.8, 0.7, 0.6), "treated": _check(0.5, 0.5, 0.4, 0.6)}
    assert headline(falls_only, _treat((0.6, 0.5), (0.6, 0.45))).startswith("Background reliance falls")


def test_headline_without_treat_json_uses_the_composites():
    checks = {"original": _check(0.5, 0.8, 0.7, 0.6), "treated": _check(0.9, 0.3, 0.2, 0.1)}
    assert "accuracy on these composites 50% → 90%" in headline(checks, None)


def test_reliance_section_has_per_class_rows_and_a_titled_figure():
    checks = {"original": _check(0.5, 0.8, 0.7, 0.6), "control": _check(0.55, 0.78, 0.7, 0.55),
              "treated": _check(0.85, 0.4, 0.3, 0.2)}
    section = reliance_section(checks, _treat((0.585, 0.547), (0.92, 0.847)))
    assert section.key == "reliance" and section.intro.startswith("Treatment moves the model off the background")
    assert section.figures[0].title == headline(checks, _treat((0.585, 0.547), (0.92, 0.847)))
    assert "85% / 30% / 40% / 20%" in section.tables[1]


def test_shortcut_section_leads_with_the_verdict():
    section = shortcut_section(_check(0.1, 0.8, 0.7, 0.6))
    assert section.intro.startswith("Verdict — reads the background: numbers")
    assert "90%" in section.tables[1] and "tight masks" in section.intro


def test_treatment_section_leads_with_the_verdict_and_lists_candidates():
    treat = _treat((0.585, 0.547), (0.92, 0.847))
    treat["verdict"] = {"winner": "treated", "candidate": "space", "swap_gain": 0.12, "swap_gain_se": 0.02,
                        "use_treated": True, "message": "Use the treated model: swap +12 ± 2 points over the control."}
    treat["candidates"] = [{"name": "space", "select_swap": 0.847, "trial_epochs": None, "seconds": 30.0},
                           {"name": "input-gradient", "select_swap": 0.7, "trial_epochs": None, "seconds": 20.0}]
    section = treatment_section(treat, ["a", "b"])
    assert section.intro.startswith("Use the treated model: swap +12 ± 2 points")
    assert "space (chosen)" in section.tables[1] and "84.70%" in section.tables[1] and "input-gradient" in section.tables[1]
    assert section.tables[0].index("test accuracy") < section.tables[0].index("swap accuracy")


def test_treatment_section_reads_old_files_without_verdict():
    section = treatment_section(_treat((0.6, 0.5), (0.7, 0.6)), ["a", "b"])
    assert section.intro.startswith("The control is the same fine-tuning") and len(section.tables) == 1
