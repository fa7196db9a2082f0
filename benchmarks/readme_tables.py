"""Every measured number in README.md and docs/, generated from benchmarks/results/*.json.

A page marks a generated block with two HTML comments on their own lines::

    <!-- TABLE:shortcut -->
    ... generated, do not edit ...
    <!-- /TABLE:shortcut -->

and this script rewrites what lies between them with the output of the function registered under that name.
``python benchmarks/readme_tables.py`` rewrites README.md and docs/**/*.md in place; ``--check`` only reports the
blocks that differ from the JSON (exit 1), which is what tests/test_readme_numbers.py runs.

Adding a table for a new results file is one function::

    @table("treatment_matrix")
    def treatment_matrix(r: Results) -> str:
        doc = r["treatment_matrix"]           # benchmarks/results/treatment_matrix.json
        return markdown_table(["arm", "test"], [[row["arm"], pct(row["test"])] for row in doc["rows"]])

then ``<!-- TABLE:treatment_matrix -->`` / ``<!-- /TABLE:treatment_matrix -->`` on a page and a run of this script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from modeldoctor.doctor.search import SIGNIFICANCE, annotation_factor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"<!-- TABLE:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /TABLE:(?P=name) -->", re.S)
START = re.compile(r"<!-- TABLE:([\w-]+) -->")


class Results:
    """``results["shortcut"]`` = benchmarks/results/shortcut.json, read once."""

    def __init__(self, folder: Path = RESULTS) -> None:
        self.folder = folder
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = json.loads((self.folder / f"{name}.json").read_text())
        return self._cache[name]

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.json").exists()


TABLES: dict[str, Callable[[Results], str]] = {}


def table(name: str) -> Callable[[Callable[[Results], str]], Callable[[Results], str]]:
    """Register a block generator under ``name`` (the ``TABLE:name`` marker)."""

    def register(fn: Callable[[Results], str]) -> Callable[[Results], str]:
        if name in TABLES:
            raise ValueError(f"table {name!r} registered twice")
        TABLES[name] = fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------------- formatting
def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage without the sign: 0.9287 → '92.9'."""
    return f"{100 * x:.{digits}f}"


def pm(stat: dict, digits: int = 2, scale: float = 100.0) -> str:
    """``{"mean", "std"}`` as 'mean ± std' (fractions scaled to percent by default)."""
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def num(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def thousands(x: float) -> str:
    return f"{x:,.0f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    rule = [("---:" if a == "r" else "---") for a in (align or ["l"] * len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def source(*names: str) -> str:
    """The line under a table naming the results files it comes from."""
    files = ", ".join(f"`benchmarks/results/{n}.json`" for n in names)
    return f"<small>Generated from {files} by `benchmarks/readme_tables.py`.</small>"


# ------------------------------------------------------------------------------------------------ the numbers
TRANSFORMER = re.compile(r"(^|[_:])(swin|vit|maxvit|deit|efficientformer)")


def architecture_counts(r: Results) -> dict[str, Any]:
    rows = r["architectures"]
    passed = [x for x in rows if all(x[step] == "pass" for step in ("train", "diagnose", "treat"))]
    refused = [x for x in rows if x["train"] == "refused"]
    return {"rows": len(rows), "passed": len(passed), "refused": len(refused),
            "failed": len(rows) - len(passed) - len(refused),
            "minutes": sum(x.get("seconds") or 0.0 for x in rows) / 60,
            "torchvision": sum(not x["spec"].startswith("timm:") for x in passed),
            "timm": sum(x["spec"].startswith("timm:") for x in passed)}


def transformer_rows(r: Results) -> list[dict[str, Any]]:
    return [x for x in r["architectures"] if TRANSFORMER.search(x["spec"])]


def transformer_counts(r: Results) -> str:
    rows = transformer_rows(r)
    passed = [x["spec"] for x in rows if all(x[s] == "pass" for s in ("train", "diagnose", "treat"))]
    others = [f"{x['spec']} ({'killed for memory on this 24 GB machine' if x['train'] == 'fail: exit -9' else x['train']})"
              for x in rows if x["spec"] not in passed]
    return (f"transformers (read as token maps): {len(passed)} of {len(rows)} pass"
            + (f"; not passing: {', '.join(others)}" if others else ""))


def recipe_val(r: Results, file: str, model: str, arm: str) -> float:
    return next(x["val"] for x in r[file]["rows"] if x["model"] == model and x["arm"] == arm)


def shortcut_family(r: Results, family: str) -> dict[str, Any]:
    return r["shortcut"]["families"][family]


def matrix_glance(r: Results) -> str:
    """The shipped default against its control per measured cell (the treatment matrix), test accuracy."""
    if not r.has("treatment_matrix"):
        return "not measured yet (treatment matrix)"
    cells = [c for c in r["treatment_matrix"]["cells"] if c["method"] == "default"]
    parts = [f"{c['family']} · {c['arch']} · {c['masks']} ({len(c['seeds'])} seed{'s' if len(c['seeds']) > 1 else ''}) "
             f"{pct(c['test_mean'])} vs control {pct(c['test_mean'] - c['paired_vs_control'])}, "
             f"{pct(c['gap_recovered'], 0)}% of the gap" for c in cells]
    verdicts = [u for c in r["treatment_matrix"]["cells"] if c["method"] == "verdict" for u in c["use_treated"]]
    lead = "shipped default (counterfactual backgrounds or last layer, chosen on held-out swaps): "
    return (lead + "; ".join(parts) + f". Its verdict recommended the treated arm in {sum(map(bool, verdicts))} of "
            f"{len(verdicts)} runs (underpowered: see the treatment matrix); tint-mnist's cue is on the object")


@table("at_a_glance")
def at_a_glance(r: Results) -> str:
    ds, d1, ts = r["diagnosis_speed"], r["discovery1"]["table"], r["treat_speed"]
    clean = r["clean"]["report"]["mnist5k"]
    an = r["analyses"]["summary"]
    det, dec, sq = an["detectors"], an["decompose"], an["stability"]
    arch = architecture_counts(r)
    sc, reg = r["scale"], r["regularizers"]["summary"]
    fgsm_gain = reg["input_grad_reg_0.1"]["fgsm_0.05"]["mean"] - reg["baseline"]["fgsm_0.05"]["mean"]
    rows = [
        ("Is diagnosis at the floor cost?",
         f"yes: last conv of ResNet-18 at J = 10 costs {num(ds['last_layer_ratio_vs_plain_pass'])}× one plain "
         f"forward+backward; J = 10 vs J = 1: {num(ds['last_layer_ratio_j10_vs_j1'])}×; four layers at once "
         f"{num(ds['last_stage_speedup_vs_naive'], 1)}× faster than the naive loop (max difference "
         f"{ds['last_stage_max_abs_difference']:g})"),
        ("Discovery 1 (sparse, class-specific kernels)?",
         f"specific yes (Jaccard between classes {num(d1[0]['mean_pairwise_jaccard'])} → "
         f"{num(d1[-1]['mean_pairwise_jaccard'])} first → last layer); sparse only weakly (90% of a class's mass "
         f"needs {pct(d1[-1]['fraction_of_channels'], 0)}% of the last layer's kernels)"),
        ("Does the treatment fix a background shortcut?", matrix_glance(r)),
        ("And on a small ViT?", vit_glance(r)),
        ("What does a treatment step cost?",
         f"paper setting (Eq. 5 + 6, J = 10) {num(ts['paper_setting']['ratio_time'])}× the time and "
         f"{num(ts['paper_setting']['ratio_memory'])}× the memory of a plain step; shipped default "
         f"{num(ts['shipped_default']['ratio_time'])}× / {num(ts['shipped_default']['ratio_memory'])}× — the cost of "
         f"its {num(ts['shipped_default']['ratio_images'])}× images; the whole default `treat` "
         f"{num(ts['whole_treat']['ratio_time'])}× its control arm"
         + (f" ({num(ts['whole_treat_fallback']['ratio_time'])}× when the low-lr fallback runs)"
            if "whole_treat_fallback" in ts else "")),
        ("Does the channel-wise treatment help on clean data?",
         f"no measurable gain over the control (mnist5k {pm(clean['channel'], 1)} vs {pm(clean['control'], 1)})"),
        ("Discovery 2 (FGSM adversarials unstable under feature noise)?",
         f"not at the paper's δ (AUROC {num(sq['paper_auroc']['mean'])}); with relative δ, the combined "
         f"feature-noise detector reaches {pm(det['fgsm']['auroc_noise_combined'], 3, 1)} (FGSM) / "
         f"{pm(det['pgd']['auroc_noise_combined'], 3, 1)} (PGD), below the feature-squeezing peer "
         f"({num(det['fgsm']['auroc_feature_squeezing']['mean'], 3)} / "
         f"{num(det['pgd']['auroc_feature_squeezing']['mean'], 3)}); the flip share alone "
         f"{num(det['fgsm']['auroc_noise_flip']['mean'])}"),
        ("Decomposed final layer (k₂ = 5, k₁ chosen on val)?",
         f"r_A = {pm(dec['r_A'], 3, 1)}; the paper's retraining (whole network, 1 epoch) "
         f"{pm(dec['accuracy_retrained'])} vs {pm(dec['accuracy_full'])} full (matched control "
         f"{pct(dec['accuracy_control']['mean'], 2)})"),
        ("Does it take any CNN, and yours?",
         f"{arch['passed']} of {arch['rows']} builders ({arch['torchvision']} torchvision, {arch['timm']} timm) pass "
         f"train → diagnose → treat{f', {n} refused in one line' if (n := arch['refused']) else ''}; "
         f"{transformer_counts(r)}; "
         "MobileNet-V3-small from "
         f"chance ({pct(recipe_val(r, 'recipes', 'mobilenet_v3_small', 'family_recipe'))}%) to "
         f"{pct(recipe_val(r, 'recipes_precise_bn', 'mobilenet_v3_small', 'family_recipe'))}% validation with "
         f"precise BatchNorm"),
        ("Does it scale out?",
         f"2 gloo processes on 2 cores: diagnosis {num(sc['speedup_2proc'])}× faster "
         f"({num(sc['speedup_2proc_wall'])}× the whole command); peak RSS of `diagnose` over a "
         f"{thousands(sc['images'])}-image {sc['image_px']} px folder {thousands(sc['peak_rss_mb'])} MB"),
        ("Input-gradient regularisation / FocusedDropout?",
         f"no clean-accuracy gain; input-gradient reg. {100 * fgsm_gain:+.1f} points under FGSM ε = 0.05"),
    ]
    return markdown_table(["question", "answer on our offline data (CPU)"], rows) + "\n\n" + source(
        "diagnosis_speed", "discovery1", "shortcut", "vit_shortcut", "treat_speed", "clean", "analyses",
        "architectures", "recipes",
        "recipes_precise_bn", "scale", "regularizers")


MATRIX_ARMS = [("vanilla", "vanilla"), ("clean reference", "clean"), ("control (plain fine-tune)", "control"),
               ("**treat, shipped default** (treated arm)", "default"),
               ("what the verdict recommends (treated or control)", "recommended"),
               ("paper Eq. 6 (share, last two convs)", "paper_eq6"),
               ("counterfactual backgrounds alone", "counterfactual"), ("last layer alone", "last_layer"),
               ("masked input-gradient peer", "input_gradient"), ("default on the clean model", "do_no_harm"),
               ("control on the clean model", "do_no_harm_control"),
               ("recommended on the clean model", "do_no_harm_recommended")]
ON_OBJECT = {"tint-mnist"}  # families whose cue sits on the object: masks cannot help


def matrix_goals(cells: list[dict[str, Any]]) -> list[str]:
    """The issue's goals per background-shortcut cell, computed from the cells."""
    out = []
    for c in cells:
        if c["method"] != "default" or c["family"] in ON_OBJECT:
            continue
        std = max(c["control_std"], 1e-9)
        spread = (f"= {c['paired_vs_control'] / std:.1f} control std ({'>' if c['paired_vs_control'] > 2 * std else '≤'} 2)"
                  if len(c["seeds"]) > 1 else "(one seed: no control std to compare with)")
        out.append(f"{c['family']} / {c['arch']} / {c['masks']}: gap recovered {pct(c['gap_recovered'], 0)}% "
                   f"({'≥' if c['gap_recovered'] >= 0.8 else '<'} 80%), vs control {pct(c['paired_vs_control'])} "
                   f"points {spread}")
    return out


RANKED_ARMS = ("vanilla", "clean", "control", "default", "paper_eq6", "counterfactual", "last_layer", "input_gradient")


def meter_ranking(rows: dict[str, dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(concordant, pairs, discordant pair names): do the arms' mean swap accuracies order them as their mean test
    accuracies do?  Only arms measured on the same swap composites (the vanilla model's held-out objects) count;
    pairs tied on test within half a point are skipped."""
    arms = [a for a in RANKED_ARMS if a in rows]
    concordant, pairs, discordant = 0, 0, []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            test = rows[a]["test_mean"] - rows[b]["test_mean"]
            if abs(test) < 0.005:
                continue
            pairs += 1
            if test * (rows[a]["swap_mean"] - rows[b]["swap_mean"]) > 0:
                concordant += 1
            else:
                discordant.append(f"{a} vs {b}")
    return concordant, pairs, discordant


def verdict_agreement(verdicts: list[dict[str, Any]]) -> str:
    """Per run: does the swap meter's treated-vs-control sign match test's, and did test gain where the verdict said
    to use the treated arm?"""
    runs = [(u, t, w) for v in verdicts for u, t, w in zip(v["use_treated"], v["test_gain"], v["swap_gain"])]
    if not runs:
        return ""
    decided = [(t, w) for _, t, w in runs if abs(t) >= 0.005]
    agree = sum(t * w > 0 for t, w in decided)
    used = [t for u, t, _ in runs if u]
    kept = [t for u, t, _ in runs if not u]
    return (f" Per run (treated arm vs its control, {len(runs)} runs): swap and test move the same way in {agree} of "
            f"{len(decided)} (test differences under half a point skipped); where the verdict said use treated "
            f"({len(used)} runs) test gained {pct(sum(used) / max(len(used), 1))} points on average, least "
            f"{pct(min(used, default=0.0))}; where it kept the control ({len(kept)} runs) the treated arm would have "
            f"gained {pct(sum(kept) / max(len(kept), 1))} on average (from {pct(min(kept, default=0.0))} to "
            f"{pct(max(kept, default=0.0))}).{annotation_needed(verdicts)}")


def annotation_needed(verdicts: list[dict[str, Any]]) -> str:
    """Where the verdict kept the control on a positive swap gain: how much more annotation would confirm it."""
    factors = sorted(f for v in verdicts if "verdict_se" in v
                     for g, se in zip(v["verdict_gain"], v["verdict_se"])
                     if g is not None and (f := annotation_factor(g, se)) is not None)
    ses = sorted(se for v in verdicts if "verdict_se" in v for se in v["verdict_se"] if se is not None)
    if not factors:
        return ""
    return (f" Where it kept the control on a positive swap gain ({len(factors)} runs), confirming that gain would "
            f"take {num(factors[len(factors) // 2], 1)}× the annotated images (median; from {num(factors[0], 1)}× "
            f"to {num(factors[-1], 1)}×): at 20 annotated images per class the median standard error is "
            f"{pct(ses[len(ses) // 2])} points, so gains under about {pct(SIGNIFICANCE * ses[len(ses) // 2], 0)} "
            "points stay unconfirmed.")


@table("treatment_matrix")
def treatment_matrix(r: Results) -> str:
    if not r.has("treatment_matrix"):
        return "_Not measured yet: generated from `benchmarks/results/treatment_matrix.json`._"
    doc = r["treatment_matrix"]["cells"]
    cells = [c for c in doc if c["method"] != "verdict"]
    verdicts = {(c["family"], c["arch"], c["masks"]): c for c in doc if c["method"] == "verdict"}
    blocks = []
    for key in dict.fromkeys((c["family"], c["arch"], c["masks"]) for c in cells):
        rows = {c["method"]: c for c in cells if (c["family"], c["arch"], c["masks"]) == key}
        body = [[label, f"{pct(c['test_mean'])} ± {pct(c['test_std'])}", pct(c["swap_mean"]), pct(c["val_mean"]),
                 pct(c["swap_mean"] - c["test_mean"]),
                 "" if m in ("vanilla", "clean") else f"{pct(c['gap_recovered'], 0)}%",
                 "" if m in ("vanilla", "clean", "control", "do_no_harm_control") else
                 f"{pct(c['paired_vs_control'])} ± {pct(c['paired_vs_control_std'])}"]
                for label, m in MATRIX_ARMS if (c := rows.get(m))]
        v = verdicts.get(key, {})
        seeds = ", ".join(str(s) for s in next(iter(rows.values()))["seeds"])
        agree, pairs, wrong = meter_ranking(rows)
        ranking = (f"swap orders {agree} of {pairs} arm pairs as test does"
                   + (f" (not: {'; '.join(wrong)})" if wrong else ""))
        blocks.append(f"**{key[0]} · {key[1]} · {key[2]} masks** (treat v{v.get('treat_version')}; seeds {seeds}; "
                      f"chosen: "
                      f"{', '.join(v.get('chosen', []))}; verdict says use treated: {v.get('use_treated')}; "
                      f"{ranking}{check_text(v)})\n\n"
                      + markdown_table(["arm", "test", "swap", "val", "swap − test", "gap recovered",
                                        "paired vs control (test)"], body, ["l", "r", "r", "r", "r", "r", "r"]))
    goals = "\n".join(f"- {g}" for g in matrix_goals(cells))
    ranked = [meter_ranking({c["method"]: c for c in cells if (c["family"], c["arch"], c["masks"]) == key})
              for key in dict.fromkeys((c["family"], c["arch"], c["masks"]) for c in cells)]
    goals += (f"\n\nThe swap meter orders {sum(a for a, _, _ in ranked)} of {sum(p for _, p, _ in ranked)} arm pairs "
              "(cell means, test differences under half a point skipped) as test accuracy does.")
    goals += verdict_agreement([c for c in doc if c["method"] == "verdict" and "test_gain" in c])
    return "\n\n".join(blocks) + f"\n\nGoals per background-shortcut cell:\n\n{goals}\n\n" + source("treatment_matrix")


def check_text(verdict: dict[str, Any]) -> str:
    """The shortcut check's reading of the cell's vanilla and clean models, when the summary has it."""
    if "check" not in verdict:
        return ""
    def reads(model: str) -> str:
        labels = verdict["check"][model]
        return f"{labels.count('reads the background')} of {len(labels)}"
    return (f"; the shortcut check finds the background read by the vanilla model on {reads('vanilla')} seeds "
            f"({pct(verdict['check_follow']['vanilla'])}% of composites take the donor's class, "
            f"{pct(verdict['check_own']['vanilla'])}% on their own backgrounds), by the clean one on {reads('clean')}")


def version_change(r: Results, old_name: str, new_name: str, versions: bool = True) -> str:
    """Cell by cell, what a change of the shipped default did: the summary ``old_name`` against ``new_name``."""
    if not (r.has(old_name) and r.has(new_name)):
        return f"_Not measured yet: generated from `benchmarks/results/{old_name}.json`._"

    def index(doc: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
        return {(c["family"], c["arch"], c["masks"], c["method"]): c for c in doc["cells"]}

    old, new = index(r[old_name]), index(r[new_name])
    rows, moved = [], []
    for key in dict.fromkeys(k[:3] for k in new):
        if (*key, "default") not in old or (*key, "default") not in new:
            continue
        cells = []
        for arm in ("default", "recommended", "do_no_harm"):
            a, b = old.get((*key, arm)), new.get((*key, arm))
            cells.append(f"{pct(a['test_mean'])} → {pct(b['test_mean'])}" if a and b else "")
            if a and b and arm != "do_no_harm":
                moved.append(b["test_mean"] - a["test_mean"])
        chosen = [", ".join(d.get((*key, "verdict"), {}).get("chosen", [])) for d in (old, new)]
        version = new.get((*key, "verdict"), {}).get("treat_version")
        rows.append([" · ".join(key), *cells, f"{chosen[0]} → {chosen[1]}", *([version] if versions else [])])
    better, worse = sum(m > 0.005 for m in moved), sum(m < -0.005 for m in moved)
    return (markdown_table(["cell", "default (treated arm)", "recommended", "default on the clean model",
                            "chosen per seed", *(["treat version now"] if versions else [])], rows)
            + f"\n\nOf {len(moved)} default and recommended means, {better} rose and {worse} fell by more than "
              "half a point; the rest moved less.\n\n" + source(old_name, new_name))


@table("treatment_matrix_v1")
def treatment_matrix_v1(r: Results) -> str:
    """What the last-layer change (treat v1 → v3) did."""
    return version_change(r, "treatment_matrix_v1", "treatment_matrix_v3")


@table("treatment_matrix_v3")
def treatment_matrix_v3(r: Results) -> str:
    """What the counterfactual fine-tune's low-lr fallback (treat v3 → v4) did."""
    return version_change(r, "treatment_matrix_v3", "treatment_matrix_v4")


@table("treatment_matrix_v4")
def treatment_matrix_v4(r: Results) -> str:
    """What the guarded donor-place paste (treat v4/v5 → v6) did."""
    return version_change(r, "treatment_matrix_v4", "treatment_matrix")


@table("treatment_matrix_donor")
def treatment_matrix_donor(r: Results) -> str:
    """The shipped default against the same cells with every composite at the donor's object's place (an option)."""
    return version_change(r, "treatment_matrix", "treatment_matrix_donor", versions=False)


@table("treatment_matrix_dev")
def treatment_matrix_dev(r: Results) -> str:
    if not r.has("treatment_matrix_dev"):
        return "_Not measured yet: generated from `benchmarks/results/treatment_matrix_dev.json`._"
    shown = ("vanilla", "control", "default", "clean", "do_no_harm_control", "do_no_harm")
    rows = [[c["family"], c["arch"], c["masks"], c["method"], f"{pct(c['test_mean'])} ± {pct(c['test_std'])}",
             pct(c["swap_mean"]), ", ".join(map(str, c["seeds"]))]
            for c in r["treatment_matrix_dev"]["cells"] if c["method"] in shown]
    chosen = "; ".join(f"{c['family']} · {c['arch']}: {', '.join(c['chosen'])}"
                       for c in r["treatment_matrix_dev"]["cells"] if c["method"] == "verdict")
    return (markdown_table(["family", "architecture", "masks", "arm", "test", "swap", "development seeds"], rows)
            + f"\n\nChosen candidate per seed: {chosen}.\n\n" + source("treatment_matrix_dev"))


VIT_ARMS = [("vanilla", "vanilla"), ("clean reference", "clean"), ("control (plain fine-tune)", "control"),
            ("**treat, shipped default** (treated arm)", "default"),
            ("what the verdict recommends (treated or control)", "recommended"),
            ("counterfactual backgrounds alone", "counterfactual"), ("last layer alone", "last_layer")]


def vit_arms(r: Results) -> dict[str, dict[str, Any]]:
    return {c["method"]: c for c in r["vit_shortcut"]["cells"]}


def vit_glance(r: Results) -> str:
    """The ViT's shortcut check and treatment in one line (README's results at a glance)."""
    d, arms = r["vit_shortcut"], vit_arms(r)
    reads = {model: c["verdicts"].count("reads the background") for model, c in d["checks"].items()}
    default, n = arms["default"], d["verdict_counts"]["runs"]
    return (f"{d['arch']} on {d['family']} ({n} seeds): the check says \"reads the background\" for {reads['vanilla']} "
            f"of {n} vanilla models ({pm(d['checks']['vanilla']['follow'], 0)}% of composites follow the background) "
            f"and for {reads['clean']} of {n} clean ones; shipped default {pct(default['test_mean'])} ± "
            f"{pct(default['test_std'])} vs control {pct(arms['control']['test_mean'])} (paired "
            f"{100 * default['paired_vs_control']:+.1f} ± {pct(default['paired_vs_control_std'])}), "
            f"{pct(default['gap_recovered'], 0)}% of the gap to a clean reference that reaches only "
            f"{pct(arms['clean']['test_mean'])}; its verdict recommended the treated arm in "
            f"{d['verdict_counts']['use_treated']} of {n}")


def vit_checks(d: dict[str, Any]) -> str:
    return "; ".join(f"{model} {' / '.join(sorted(set(c['verdicts'])))} ({c['verdicts'].count(c['verdicts'][0])} of "
                     f"{len(c['verdicts'])}): {pm(c['follow'], 1)}% of composites take the background's class, "
                     f"{pm(c['own'], 1)}% on their own backgrounds, swap accuracy {pm(c['swap_accuracy'], 1)}%"
                     for model, c in d["checks"].items())


@table("vit_shortcut")
def vit_shortcut(r: Results) -> str:
    d, arms = r["vit_shortcut"], vit_arms(r)
    body = [[label, pm({"mean": c["test_mean"], "std": c["test_std"]}, 1),
             pm({"mean": c["swap_mean"], "std": c["swap_std"]}, 1), pm({"mean": c["val_mean"], "std": c["val_std"]}, 1),
             "" if m in ("vanilla", "clean") else f"{pct(c['gap_recovered'], 0)}%",
             "" if m in ("vanilla", "clean", "control") else
             f"{100 * c['paired_vs_control']:+.1f} ± {pct(c['paired_vs_control_std'])}"]
            for label, m in VIT_ARMS if (c := arms.get(m))]
    verdicts = "; ".join(f"seed {s}: {run['chosen']} chosen, {100 * run['verdict']['swap_gain']:+.1f} ± "
                         f"{pct(run['verdict']['swap_gain_se'])} swap points over the control → "
                         f"{'treated' if run['verdict']['use_treated'] else 'keep the control'}"
                         for s, run in d["runs"].items())
    sec = d["seconds"]
    return (markdown_table(["arm", "test", "swap", "val", "gap recovered", "paired vs control (test)"], body,
                           ["l", "r", "r", "r", "r", "r"])
            + f"\n\nShortcut check at `{d['checks']['vanilla']['layer']}`: {vit_checks(d)}.\n\n"
            + f"Verdict (held-out swaps): {verdicts}.\n\n"
            + f"Time: {num(sec['per_epoch'], 1)} s per training epoch, {sec['baselines'] / 60:.1f} min for the "
              f"{2 * len(d['runs'])} baselines ({d['epochs']} epochs each), {pm(sec['treat_per_seed'], 0, 1)} s per "
              f"default `treat` (control, candidate search, verdict), {sec['total'] / 60:.1f} min in all, one thread."
              "\n\n" + source("vit_shortcut"))


@table("collapse")
def collapse(r: Results) -> str:
    d = r["collapse_resnet20"]
    stages = ["conv1", "layer1", "layer2", "layer3"]
    rows = [[name, pct(v["accuracy"]["test"]), pct(v["accuracy"]["swap"]), pct(v["accuracy"]["val"])]
            + [f"{num(v['weights'][p]['delta'])} / {num(v['weights'][p]['growth'])}" for p in stages]
            + [num(v["mean_max_logit"]), ", ".join(f"{k} {num(x, 1)}" for k, x in v["lambdas"].items())]
            for name, v in d["variants"].items()]
    o = d["original"]
    return (markdown_table(["variant", "test", "swap", "val"] + [f"{p} ‖ΔW‖/‖W₀‖ / ‖W‖/‖W₀‖" for p in stages]
                           + ["mean max logit", "λ"], rows)
            + f"\n\n{d['arch']} on {d['family']}, development seed {d['seed']}: original test {pct(o['test'])}, "
              f"swap {pct(o['swap'])}; 3 epochs, last epoch kept.\n\n" + source("collapse_resnet20"))


@table("shortcut_check")
def shortcut_check(r: Results) -> str:
    d = r["shortcut_check"]
    rows = []
    for family, f in d["families"].items():
        for key, t in f["table"].items():
            model, masks = key.split("_")
            verdicts = sorted(set(t["verdicts"]))
            rows.append([family, model, masks, " / ".join(verdicts), pm(t["follows_background"], 1),
                         pm(t["swap_accuracy"], 1), pm(t["activation_share"], 1), pm(t["gradcam_share"], 1),
                         pm(t["probability_drop"], 1)])
    timing = d["timing"]
    return (markdown_table(["family", "model", "masks", "verdict (every seed)", "follows background %", "swap %",
                            "activation share %", "Grad-CAM share %", "p drop %"], rows)
            + f"\n\n`diagnose` with masks takes {num(timing['ratio'])}× the time without "
              f"({num(timing['with_s'])} s vs {num(timing['without_s'])} s).\n\n" + source("shortcut_check"))


SHORTCUT_ARMS = [("vanilla", "vanilla"), ("clean reference", "clean_reference"),
                 ("control (plain fine-tune)", "control"), ("**treat, shipped default**", "space_20_per_class"),
                 ("masked input-gradient peer, same budget", "input_gradient_20_per_class"),
                 ("paper layers (last two convs), share form, auto λ", "paper_layers_share_20_per_class")]


@table("shortcut")
def shortcut(r: Results) -> str:
    out = []
    for family, val_note in (("shortcut-mnist", "val"), ("border-mnist", "val (carries the shortcut)")):
        f = shortcut_family(r, family)
        rows = [[label, pm(f[key]["test"]), pct(f[key]["swap"]["mean"]), pct(f[key]["val"]["mean"])]
                for label, key in SHORTCUT_ARMS]
        out.append(markdown_table([family, "test", "swap", val_note], rows))
        gap, paired = f["gap_recovered_space_20_per_class"], f["paired_space_20_per_class_minus_control"]["test"]
        out.append(
            f"Gap recovered (vanilla → clean): **{pm(gap, 1)}%** (control {pm(f['gap_recovered_control'], 1)}%, peer "
            f"{pm(f['gap_recovered_input_gradient_20_per_class'], 1)}%). Paired treated − control: "
            f"**{100 * paired['mean']:+.2f} ± {100 * paired['std']:.2f}** points "
            f"({', '.join(f'{100 * v:+.1f}' for v in paired['values'])}); treated − peer: "
            f"{100 * f['paired_space_minus_input_gradient']['mean']:+.1f} ± "
            f"{100 * f['paired_space_minus_input_gradient']['std']:.1f}.")
    minutes = r["shortcut"]["seconds"] / 60
    out.append(f"Test accuracy %, mean ± std over seeds {r['shortcut']['seeds']}; swap and val: means. "
               f"Whole run: {minutes:.1f} min.")
    return "\n\n".join(out) + "\n\n" + source("shortcut")


@table("swap_meter")
def swap_meter(r: Results) -> str:
    fams = {name: shortcut_family(r, name) for name in ("shortcut-mnist", "border-mnist")}
    clean = sorted(f["clean_reference"]["swap"]["mean"] for f in fams.values())
    vanilla = sorted(f["vanilla"]["swap"]["mean"] for f in fams.values())
    bm = fams["border-mnist"]["vanilla"]
    return (f"Measured (`benchmarks/shortcut.py`, 3 seeds): the clean reference models score {pct(clean[0])}–"
            f"{pct(clean[-1])}% on the swap test, the shortcut models {pct(vanilla[0])}–{pct(vanilla[-1])}%. On "
            f"border-mnist, whose validation split carries the shortcut, the vanilla model has {pct(bm['val']['mean'])}% "
            f"validation but {pct(bm['swap']['mean'])}% swap accuracy.")


@table("weight_change")
def weight_change(r: Results) -> str:
    f = shortcut_family(r, "shortcut-mnist")["weight_change_seed0"]
    layers = list(f["treated"])
    rows = [[arm, *(num(f[arm][layer]) for layer in layers)] for arm in ("control", "treated")]
    return (markdown_table(["‖W − W₀‖ / ‖W₀‖", *(f"`{layer}`" for layer in layers)], rows)
            + "\n\nshortcut-mnist, seed 0.\n\n" + source("shortcut"))


@table("treat_speed")
def treat_speed(r: Results) -> str:
    d = r["treat_speed"]
    rows = []
    for key, label in (("shipped_default", "shipped default"), ("paper_setting", "paper setting")):
        s = d[key]
        what = (f"{s['model']}, {s['input_size']} px, batch {s['batch']}"
                + (f" ({s['annotated']} annotated)" if "annotated" in s else "")
                + (f" + {s['composites']} counterfactual composites" if "composites" in s else "")
                + (f", J = {s['noise_draws']}" if "noise_draws" in s else "")
                + (f", `{s['layer']}`" if "layer" in s else ""))
        images = f"{num(s['ratio_images'])}× ({num(s['ratio_time_per_image'])}× per image)" if "ratio_images" in s else "1×"
        rows.append([label, what, images, f"{num(s['ratio_time'])}×", f"{num(s['ratio_memory'])}×"])
    whole = ""
    if "whole_treat" in d:
        w = d["whole_treat"]
        whole = (f"\n\nThe whole default `treat` (control, both candidates, verdict) on {w['data']} / {w['model']}: "
                 f"{w['seconds_total']:.0f} s against {w['seconds_control']:.0f} s for its control arm alone, "
                 f"**{num(w['ratio_time'])}×** (chosen: {w['chosen']}).")
    if "whole_treat_fallback" in d:
        w = d["whole_treat_fallback"]
        stops = ", ".join(f"{name} stopped after epoch {e}" for name, e in w.get("stopped_after", {}).items())
        whole += (f" When the fallback runs too (the clean model, {w['data']}: candidates "
                  f"{', '.join(w['candidates'])}{'; ' + stops if stops else ''}): {w['seconds_total']:.0f} s against "
                  f"{w['seconds_control']:.0f} s, **{num(w['ratio_time'])}×** (chosen: {w['chosen']}).")
    if "whole_treat_fallback_no_early_stop" in d:
        w = d["whole_treat_fallback_no_early_stop"]
        whole += (f" The same run without the early stop (`early_stop_margin=None`, treat v4), in the same process: "
                  f"{w['seconds_total']:.0f} s against {w['seconds_control']:.0f} s, **{num(w['ratio_time'])}×** "
                  f"(chosen: {w['chosen']}).")
    return (markdown_table(["setting", "model and batch", "images / plain step", "time / plain step",
                            "memory / plain step"], rows)
            + whole + f"\n\nMemory: {d['memory_method']}.\n\n" + source("treat_speed"))


@table("composites_cost")
def composites_cost(r: Results) -> str:
    d = r["composites_cost"]
    rows = [[k, f"{num(c['ratio_images'])}×", f"{num(c['ratio_time'])}×", f"{num(c['ratio_memory'])}×",
             f"{pct(c['test_mean'])} ± {pct(c['test_std'])}", f"{pct(c['swap_mean'])} ± {pct(c['swap_std'])}",
             f"{100 * c['paired_test_mean']:+.1f} ± {pct(c['paired_test_std'])}"] for k, c in d["counts"].items()]
    return (markdown_table(["composites per batch", "images / plain step", "time / plain step", "memory / plain step",
                            "test", "swap", "test − control (paired)"], rows)
            + f"\n\nCounterfactual term alone, {d['arch']}, {' and '.join(d['families'])} (exact masks), development "
              f"seeds {', '.join(map(str, d['seeds']))}: mean ± std over the {2 * len(d['seeds'])} runs.\n\n"
            + source("composites_cost"))


@table("spot_meter")
def spot_meter(r: Results) -> str:
    if not r.has("spot_meter"):
        return "_Not measured yet: generated from `benchmarks/results/spot_meter.json`._"
    d = r["spot_meter"]

    def share(runs: list[dict[str, Any]], key: str) -> str:
        values = [run[key] for run in runs if run[key] is not None]
        return pct(sum(values) / len(values)) if values else "–"

    rows = [[family, share(runs, "share"), share(runs, "clean_inside"), share(runs, "clean_outside"),
             share(runs, "clean_all"), share(runs, "clean_test"), share(runs, "vanilla_inside"),
             share(runs, "vanilla_outside")] for family, runs in d["rows"].items()]
    return (markdown_table(["family", "composites with donor content by the object %", "clean: those %",
                            "clean: the rest %", "clean: all composites %", "clean: test %", "vanilla: those %",
                            "vanilla: the rest %"], rows)
            + f"\n\n{d['arch']}, development seeds {', '.join(map(str, d['seeds']))} (means over the seeds), the "
              f"select composites `treat` builds; \"by the object\": salient pixels of the donor's background within "
              f"{d['grow']} px of the object's box.\n\n" + source("spot_meter"))


@table("finetune_budget")
def finetune_budget(r: Results) -> str:
    if not r.has("finetune_budget"):
        return "_Not measured yet: generated from `benchmarks/results/finetune_budget.json`._"
    d = r["finetune_budget"]
    rows = [[family, epochs, f"{pct(b['control_test']['mean'])} ± {pct(b['control_test']['std'])}",
             f"{pct(b['default_test']['mean'])} ± {pct(b['default_test']['std'])}",
             f"{pct(b['control_swap']['mean'])} / {pct(b['default_swap']['mean'])}",
             f"{pct(b['gap_control']['mean'], 0)}% / {pct(b['gap_default']['mean'], 0)}%",
             f"{sum(b['use_treated'])} of {len(b['use_treated'])}"]
            for family, budgets in d["families"].items() for epochs, b in budgets.items()]
    return (markdown_table(["family", "fine-tune epochs", "control test", "default test", "swap control / default",
                            "gap recovered control / default", "verdict: use treated"], rows)
            + f"\n\n{d['arch']}, exact masks, development seeds {', '.join(map(str, d['seeds']))}; every option of "
              "`treat` at its default except the epochs (both arms).\n\n" + source("finetune_budget"))


@table("finetune_lr")
def finetune_lr(r: Results) -> str:
    if not r.has("finetune_lr"):
        return "_Not measured yet: generated from `benchmarks/results/finetune_lr.json`._"
    d = r["finetune_lr"]
    rows = [[cell, policy, pm(p["control"], 1), pm(p["default"], 1),
             f"{pct(p['gap_control']['mean'], 0)}% / {pct(p['gap_default']['mean'], 0)}%", ", ".join(p["chosen"]),
             f"{pct(p['do_no_harm']['mean'])} vs {pct(p['do_no_harm_control']['mean'])}" if "do_no_harm" in p else ""]
            for cell, policies in d["cells"].items() for policy, p in policies.items()]
    verdicts = "; ".join(
        f"{policy}: mean gap {pct(v['mean_gap']['lr×1'], 0)}% → {pct(v['mean_gap'][policy], 0)}%, worst cell "
        f"{100 * min(v['default_change'].values()):+.1f} points, do-no-harm below control "
        f"{len(v['do_no_harm_below_control'])}× — **{'ship' if v['ship'] else 'rejected'}**"
        for policy, v in d["decision"].items())
    return (markdown_table(["cell", "policy", "control test", "default test", "gap recovered control / default",
                            "chosen per seed", "clean model treated vs its control"], rows)
            + f"\n\nDevelopment seeds {', '.join(map(str, d['seeds']))}, exact masks. Against v3 (lr×1): {verdicts}."
            + "\n\n" + source("finetune_lr"))


def early_stop_runs(d: dict) -> str:
    rows = []
    for run in d["runs"]:
        h, s = run["histories"], run["select_swap"]
        rows.append([f"{run['spec']} · {run['arch']} · {run['masks']}", run["seed"], run["chosen"],
                     " → ".join(pct(v) for v in h["counterfactual"]), pct(s["last-layer"]),
                     pct(s["counterfactual-low-lr"]) if "counterfactual-low-lr" in s else ""])
    return markdown_table(["cell", "seed", "chosen (v4)", "counterfactual select swap per epoch", "re-fit head",
                           "fallback"], rows)


def stops(m: str, v: dict) -> str:
    return (f"m = {m}: {v['stopped']} stop ({v['stopped_where_fallback_ran']} where the fallback ran, "
            f"{v['changed']} that chose the fine-tune; {v['epochs_saved']} fine-tune epochs saved)")


@table("early_stop")
def early_stop(r: Results) -> str:
    d = r["early_stop"]
    margins = "; ".join(stops(m, v) for m, v in d["margins"].items())
    shipped = (f"The smallest safe margin, **m = {d['chosen_margin']}**, stops "
               f"{d['margins'][str(d['chosen_margin'])]['stopped_where_fallback_ran']} of the {d['fallback_ran']} runs "
               f"where the fallback ran — **{'shipped' if d['ship'] else 'rejected'}**"
               if d["chosen_margin"] is not None else "No margin is safe")
    return (early_stop_runs(d) + f"\n\nDevelopment seeds {', '.join(map(str, d['seeds']))}; select-swap accuracy %. "
            + margins + ". " + shipped + ".\n\n" + source("early_stop"))


@table("early_stop_report")
def early_stop_report(r: Results) -> str:
    d = r["early_stop_report"]
    m = str(d["shipped_margin"])
    return (early_stop_runs(d) + f"\n\nReport seeds {', '.join(map(str, d['seeds']))}, after the margin was fixed; "
            f"select-swap accuracy %. The fallback ran in {d['fallback_ran']} of {len(d['runs'])} runs. Shipped "
            + stops(m, d["margins"][m]) + ".\n\n" + source("early_stop_report"))


def paste_place_block(d: dict[str, Any], name: str) -> str:
    """The meter reading, the variants per cell, the meter's ranking and the rule of one ``paste_place`` run."""
    families = dict.fromkeys(m["family"] for m in d["meter"])
    meter = [[f, *(pct(family_mean(d, f, key)) for key in ("clean_test", "clean_own", "clean_donor", "vanilla_own",
                                                            "vanilla_donor"))] for f in families]
    variants = list(d["meter_fidelity"])

    def arm(c: dict[str, Any]) -> str:
        gap = "" if c["gap_recovered"] is None else f", {pct(c['gap_recovered'], 0)}%"
        return f"{pct(c['test'])} ({pct(c['control'])}{gap}; {c['use_treated']}/2)"

    cells = [[c["cell"], *(arm(c[v]) for v in variants)] for c in d["cells"]]
    deeper = [[f"{r['cell']} · {r['arch']} · seed {r['seed']}", r["place"], r["chosen"], pct(r["treated"]["test"]),
               pct(r["control"]["test"]), r["use_treated"]] for r in d.get("resnet20", [])]
    fidelity = "; ".join(f"`{v}`: swap and test differences agree in sign in {f['sign_agrees']} of {f['runs']} runs, "
                         f"\"use treated\" {f['use_treated']} times ({f['use_treated_wrong']} wrong on test), median z "
                         f"{f['median_z']:.1f}" for v, f in d["meter_fidelity"].items())
    rules = "; ".join(f"`{v}`: " + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in rule.items())
                      for v, rule in d["rules"].items())
    out = (markdown_table(["family", "clean: test", "clean: swap, own place", "clean: swap, donor's place",
                           "vanilla: swap, own place", "vanilla: swap, donor's place"], meter)
           + "\n\n" + markdown_table(["cell", *(f"`{v}`: test (control, gap; use treated)" for v in variants)],
                                      cells)
           + f"\n\n{d['arch']}, development seeds {', '.join(map(str, d['seeds']))} (means); test and select-swap "
             f"accuracy %. The meter's ranking of treated against control: {fidelity}. Rules: {rules}. "
             f"This rule's outcome: **`{d['shipped']}`**.")
    if deeper:
        out += ("\n\n" + markdown_table(["run", "variant", "chosen", "test", "control", "use treated"], deeper)
                + "\n\nResNet-20 (the issue's second development architecture), outside the rule.")
    return out + "\n\n" + source(name)


def family_mean(d: dict[str, Any], family: str, key: str) -> float:
    values = [m[key] for m in d["meter"] if m["family"] == family]
    return sum(values) / len(values)


@table("paste_place")
def paste_place(r: Results) -> str:
    return paste_place_block(r["paste_place"], "paste_place")


@table("paste_place_confirm")
def paste_place_confirm(r: Results) -> str:
    return paste_place_block(r["paste_place_confirm"], "paste_place_confirm")


@table("paste_guard")
def paste_guard(r: Results) -> str:
    d = r["paste_guard"]

    def arm(c: dict[str, Any], name: str) -> str:
        return f"{pct(c[name]['test'])} ({c[name]['below_control']} below control)"

    rows = [[c["cell"], f"{c['reads']} of {c['runs']}", *(arm(c, n) for n in ("own", "donor", "guarded"))]
            for c in d["cells"]]
    return (markdown_table(["cell", "check: reads the background", "own place: test", "donor's place: test",
                            "guarded: test"], rows)
            + f"\n\n{d['arch']}, development seeds {', '.join(map(str, d['seeds']))} (means); test accuracy %. "
              "Guarded: the donor's place where the shortcut check of the model being treated reads the background, "
              "else the object's own place. Rule (written after these runs): "
              + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in d["rule"].items())
              + f" — **{'shipped as treat v6' if d['ship'] else 'rejected'}**.\n\n" + source("paste_guard"))


def keep_original_block(d: dict, seeds: str) -> str:
    rows = [[r["spec"], r["seed"], pct(r["test"]["original"]), pct(r["test"]["control"]), pct(r["test"]["treated"]),
             r["winner"], "" if r["control_gain_vs_original"] is None else
             f"{100 * r['control_gain_vs_original']:+.1f} ± {pct(r['control_gain_vs_original_se'])}",
             pct(r["before"]), pct(r["after"])] for r in d["runs"]]
    return (markdown_table(["data", "seed", "original", "control", "treated", "verdict keeps",
                            "control − original on swaps", "kept before", "kept now"], rows)
            + f"\n\n{d['arch']}, exact masks, {seeds}; test accuracy %. Do-no-harm runs (the clean models): what "
            f"the verdict keeps {pm(d['do_no_harm']['before'], 1)} → {pm(d['do_no_harm']['after'], 1)}; "
            f"background-shortcut runs {pm(d['background']['before'], 1)} → {pm(d['background']['after'], 1)} "
            f"(worst change {100 * d['worst_background_change']:+.1f} points); the original kept in "
            f"{d['kept_original']} of {len(d['runs'])} runs")


@table("keep_original")
def keep_original(r: Results) -> str:
    d = r["keep_original"]
    out = keep_original_block(d, "development seeds " + ", ".join(map(str, d["seeds"])))
    out += f" — **{'shipped' if d['ship'] else 'rejected'}**.\n\n"
    if r.has("keep_original_report"):
        rep = r["keep_original_report"]
        out += (keep_original_block(rep, "report seeds " + ", ".join(map(str, rep["seeds"]))
                                    + ", after the rule was decided (it chose nothing)") + ".\n\n")
    return out + source("keep_original", *(["keep_original_report"] if r.has("keep_original_report") else []))


@table("clean")
def clean_table(r: Results) -> str:
    rep = r["clean"]["report"]
    rows = [[name, v["train_images"], pct(v["original_test"], 2), pm(v["control"]), pm(v["channel"]),
             f"{100 * v['difference']['mean']:+.2f}"] for name, v in rep.items()]
    s = r["clean"]["settings"]
    return (markdown_table(["data", "training images", "original", "control", "+ channel-wise", "difference"], rows)
            + f"\n\n{s['model']}, {s['seeds']} seeds, {s['ft_epochs']} fine-tuning epochs; test accuracy %.\n\n"
            + source("clean"))


@table("diagnosis_speed")
def diagnosis_speed(r: Results) -> str:
    rows = []
    for name in ("diagnosis_speed", "diagnosis_speed_resnet50"):
        d = r[name]
        m = d["median_seconds"]
        rows.append([d["model"].split(",")[0], d["images"], d["batch_size"],
                     f"**{num(d['last_layer_ratio_vs_plain_pass'])}×** ({num(m['last_j10'])} s vs {num(m['plain'])} s)",
                     f"{num(d['last_layer_ratio_j10_vs_j1'])}×",
                     f"**{num(d['last_stage_speedup_vs_naive'], 1)}×** ({num(m['stage'])} s vs {num(m['naive'], 1)} s)",
                     f"{d['last_stage_max_abs_difference']:.2g} (of {d['last_stage_max_abs_sum']:.2g})"])
    return (markdown_table(["model", "images", "batch", "last conv, J = 10, vs one plain forward+backward (goal ≤ 1)",
                            "J = 10 vs J = 1 (goal ≤ 1.3)", "last stage in one call vs the naive loop (goal ≥ 8)",
                            "max abs difference of the sums"], rows)
            + "\n\n" + source("diagnosis_speed", "diagnosis_speed_resnet50"))


@table("discovery1")
def discovery1(r: Results) -> str:
    d = r["discovery1"]
    rows = [[f"`{x['layer']}`", x["depth"], x["channels"],
             "{:.1f} ({}–{})".format(x["mean_kernels_for_90pct_mass"], *x["min_max_kernels_for_90pct"]),
             num(x["fraction_of_channels"]), num(x["mean_gini"]), f"{x['relevant_per_class_mean']:.1f}",
             num(x["mean_pairwise_jaccard"]), f"{x['mean_sample_vs_class_cosine']:.3f}",
             f"{x['mean_sample_vs_other_classes_cosine']:.3f}"] for x in d["table"]]
    head = (f"{d['model']} on {d['data']}, {d['epochs']} epochs, seed {d['seed']}, validation accuracy "
            f"{pct(d['val_accuracy'])}%. Kernels for 90% of the mass vs depth: Spearman "
            f"{d['trend_kernels_for_90pct']['spearman']:+.1f}; as a fraction of the layer: Spearman "
            f"{d['trend_fraction_for_90pct']['spearman']:+.1f}.")
    return (markdown_table(["layer", "depth", "channels", "kernels for 90% mass, mean (range over classes)",
                            "as fraction of channels", "Gini", "relevant kernels per class", "Jaccard between classes",
                            "cosine: sample vs own class", "vs other classes"], rows)
            + "\n\n" + head + "\n\n" + source("discovery1"))


REGULARIZER_ROWS = [("baseline", "None (baseline)"), ("dropout_0.2", "Dropout 0.2 (before fc)"),
                    ("focused_dropout_par_0.1", "FocusedDropout par 0.1 (after layer3)"),
                    ("input_grad_reg_0.1", "Input-gradient reg. λ = 0.1")]


@table("regularizers")
def regularizers(r: Results) -> str:
    s = r["regularizers"]["summary"]
    rows = [[label, pm(s[key]["train_accuracy"]), pm(s[key]["test_accuracy"]), pm(s[key]["fgsm_0.05"]),
             pm(s[key]["fgsm_0.1"]), f"{s[key]['train_seconds']['mean']:.0f}"] for key, label in REGULARIZER_ROWS]
    return (markdown_table(["method", "train acc", "test acc", "FGSM ε=0.05", "FGSM ε=0.1", "train s/run"], rows)
            + "\n\n" + source("regularizers"))


@table("decompose")
def decompose(r: Results) -> str:
    d = r["analyses"]["summary"]["decompose"]
    per_seed = ", ".join(f"{v:.3f}" for v in d["r_A"]["values"])
    rows = [
        ["k₁ chosen on val (per seed)", ", ".join(f"{v:.0f}" for v in d["k1"]["values"]), "5 (fixed)"],
        ["A_f (full)", pm(d["accuracy_full"]), "91.17"],
        ["A_d (decomposed)", pm(d["accuracy_decomposed"]), "88.59"],
        ["**r_A**", f"**{pm(d['r_A'], 3, 1)}** ({per_seed})", "0.972"],
        ["agreement with the full prediction", pm(d["agreement"], 3, 1), "—"],
        ["**retrained, the paper's protocol** (every parameter, 1 epoch)",
         f"**{pm(d['accuracy_retrained'])}** ({100 * d['retrained_minus_full']['mean']:+.2f} ± "
         f"{100 * d['retrained_minus_full']['std']:.2f} vs A_f)", "91.51 (+0.34)"],
        ["matched control: full network, same retraining", pm(d["accuracy_control"]), "—"],
        ["retrained up to 3 epochs (epoch chosen on val)", pm(d["accuracy_retrained_3_epochs"]), "—"],
        ["matched control, up to 3 epochs", pm(d["accuracy_control_3_epochs"]), "—"],
        ["influential → noise (Table 8)", pm(d["essentiality_influential"]), "48.97"],
        ["random non-influential → noise", pm(d["essentiality_non_influential"]), "82.24"],
        ["final-layer multiply-adds (share of full)", f"{pct(d['multiply_adds_ratio']['mean'])}%", "7.8%"],
        ["top-5 influential ∩ diagnosis top-5 (of 5; chance "
         f"{d['chance_intersection_topk']['mean'] * 5:.2f})",
         f"{pm(d['intersection_vs_diagnosis_topk'], 2, 1)} (Jaccard {pm(d['jaccard_vs_diagnosis_topk'], 2, 1)})", "—"],
    ]
    return (markdown_table(["", "ours (test, %)", "paper, ResNet-20 / CIFAR-10"], rows)
            + f"\n\nModels' test accuracy: {pm(r['analyses']['summary']['test_accuracy'])}.\n\n" + source("analyses"))


@table("detectors")
def detectors(r: Results) -> str:
    s = r["analyses"]["summary"]
    det, j20, st = s["detectors"], s.get("detectors_draws20"), s["stability"]

    def both(fn: Callable[[dict], str], group: dict) -> list[str]:
        return [fn(group["fgsm"]), fn(group["pgd"])]

    rows = [
        ["attack success rate (test, of correctly classified images)",
         *both(lambda g: f"{pm(g['success_rate_test'], 1)}% ({g['adversarials_test']['mean']:.0f} ± "
                         f"{g['adversarials_test']['std']:.0f} adversarials)", det)],
        ["**feature-noise detector, combined** (`auroc_noise_combined`, fit on val)",
         *both(lambda g: f"**{pm(g['auroc_noise_combined'], 3, 1)}**", det)],
        ["… its cross-validated AUROC within val", *both(lambda g: pm(g["combined_auroc_calibration_cv"], 3, 1), det)],
        ["… best single score (`auroc_noise`, chosen on val)", *both(lambda g: pm(g["auroc_noise"], 3, 1), det)],
        ["… flip share only (`auroc_noise_flip`, chosen on val)", *both(lambda g: pm(g["auroc_noise_flip"], 3, 1), det)],
    ]
    if j20:
        rows += [["combined, J = 20 draws (`--draws 20`, sensitivity check)",
                  *both(lambda g: pm(g["auroc_noise_combined"], 3, 1), j20)],
                 ["flip share only, J = 20", *both(lambda g: pm(g["auroc_noise_flip"], 3, 1), j20)]]
    rows += [["**feature squeezing** (peer, `auroc_feature_squeezing`, setting chosen on val)",
              *both(lambda g: f"**{pm(g['auroc_feature_squeezing'], 3, 1)}**", det)],
             ["paper setting: absolute δ ≤ 0.3 at the last conv (Fig. 3)",
              f"AUROC {pm(st['paper_auroc'], 2, 1)}, {pct(st['paper_keep_false_at_best']['mean'], 0)}% keep the "
              "false label", "—"]]
    per_seed = "; ".join(
        f"{attack.upper()}: combined {' / '.join(f'{v:.3f}' for v in det[attack]['auroc_noise_combined']['values'])} "
        f"against squeezing {' / '.join(f'{v:.3f}' for v in det[attack]['auroc_feature_squeezing']['values'])}"
        for attack in ("fgsm", "pgd"))
    return (markdown_table(["", "FGSM", "PGD (10 steps)"], rows) + f"\n\nPer seed {s['seeds']}: {per_seed}.\n\n"
            + source("analyses"))


@table("overheads")
def overheads(r: Results) -> str:
    to, ab = r["train_overhead"], r["ablation_speed"]
    rows = [["`fit`'s training step vs a hand-written PyTorch loop (`train_overhead.py`)",
             f"{to['ratio']:.2f}× ({to['ours_ms_per_step']:.0f} vs {to['plain_ms_per_step']:.0f} ms per step)",
             to["goal"].replace("ratio ", ""), "train_overhead"],
            [f"unit deletion, {ab['units']} units of `{ab['layer']}` on {ab['samples']} {ab['split']} images: batched "
             "replay vs one evaluation per unit (`ablation_speed.py`)",
             f"{ab['speedup']:.1f}× faster, identical per-unit accuracy: {ab['per_unit_accuracy_identical']}", "—",
             "ablation_speed"]]
    return markdown_table(["benchmark", "measured", "goal", "results file"],
                          [[*row[:3], f"`{row[3]}.json`"] for row in rows]) + "\n\n" + source(
        "train_overhead", "ablation_speed")


@table("recipes")
def recipes(r: Results) -> str:
    rows = []
    for file, note in (("recipes", ""), ("recipes_64px", ""), ("recipes_adamw", ""),
                       ("recipes_precise_bn", "precise BN")):
        for x in r[file]["rows"]:
            rows.append([x["model"], x["arm"], f"{x['optimizer']} lr {x['lr']:g}", x["input_size"],
                         "on" if note else "off", pct(x["val"]), f"`{file}.json`"])
    return (markdown_table(["model", "arm", "optimiser", "px", "precise BN", "val acc %", "file"], rows)
            + "\n\nmnist5k, 3 epochs from scratch, seed 0, validation accuracy.\n\n"
            + source("recipes", "recipes_64px", "recipes_adamw", "recipes_precise_bn"))


@table("architectures_summary")
def architectures_summary(r: Results) -> str:
    c = architecture_counts(r)
    return (f"**{c['passed']} of {c['rows']} builders pass** train → diagnose → treat ({c['torchvision']} torchvision, "
            f"{c['timm']} timm); {c['refused']} refused in one line; {c['failed']} failed. "
            f"The per-architecture times in `benchmarks/results/architectures.json` add up to "
            f"{c['minutes']:.0f} min on 2 shared cores.")


@table("architectures")
def architectures(r: Results) -> str:
    rows = [[x["spec"], x.get("min_input") or "–", x.get("input_size") or "–",
             f"`{x['default_layer']}`" if x.get("default_layer") else "–", x["train"], x["diagnose"], x["treat"],
             f"{x['seconds']:.0f}" if x.get("seconds") is not None else "–"] for x in r["architectures"]]
    return (markdown_table(["model", "min input (px)", "run at (px)", "default layer", "train", "diagnose", "treat", "s"],
                           rows, ["l", "r", "r", "l", "l", "l", "l", "r"]) + "\n\n" + source("architectures"))


@table("architectures_transformers")
def architectures_transformers(r: Results) -> str:
    rows = [[x["spec"], f"`{x['default_layer']}`" if x.get("default_layer") else "–", x["train"], x["diagnose"],
             x["treat"], f"{x['seconds']:.0f}" if x.get("seconds") is not None else "–", x.get("note", "")]
            for x in transformer_rows(r)]
    return (transformer_counts(r) + ".\n\n"
            + markdown_table(["model", "default layer", "train", "diagnose", "treat", "s", "note"], rows)
            + "\n\n" + source("architectures"))


@table("scale")
def scale(r: Results) -> str:
    s = r["scale"]
    rows = [["diagnosis, 1 process × 1 thread", f"{num(s['seconds_1proc'], 1)} s", "—"],
            ["diagnosis, `torchrun --nproc_per_node 2` × 1 thread", f"{num(s['seconds_2proc'], 1)} s",
             f"**speed-up {num(s['speedup_2proc'])}** (goal ≥ 1.6)"],
            ["whole command incl. interpreter start and rendezvous",
             f"{num(s['wall_seconds_1proc'], 1)} s vs {num(s['wall_seconds_2proc'], 1)} s",
             f"speed-up {num(s['speedup_2proc_wall'])}"],
            [f"peak RSS of `diagnose` over {thousands(s['images'])} generated {s['image_px']} px JPEGs",
             f"**{thousands(s['peak_rss_mb'])} MB**", "goal < 2,000 MB"]]
    return (markdown_table(["measurement", "measured", "ratio"], rows)
            + f"\n\n{s['diagnosed_samples']} samples diagnosed, {s['cpus']} CPU cores.\n\n" + source("scale"))


# ----------------------------------------------------------------------------------------------------- rewriting
def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold generated blocks: README.md and docs/**/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def render(text: str, results: Results, where: str = "page") -> str:
    """``text`` with every ``TABLE:name`` block regenerated; an unknown name or an unclosed block is an error."""
    starts = START.findall(text)
    closed = [m.group("name") for m in BLOCK.finditer(text)]
    if starts != closed:
        raise ValueError(f"{where}: unclosed or nested TABLE block: {sorted(set(starts) - set(closed)) or starts}")
    unknown = sorted(set(starts) - TABLES.keys())
    if unknown:
        raise ValueError(f"{where}: no generator for TABLE {', '.join(unknown)} (benchmarks/readme_tables.py)")

    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        return f"<!-- TABLE:{name} -->\n\n{TABLES[name](results).strip()}\n\n<!-- /TABLE:{name} -->"

    return BLOCK.sub(one, text)


def stale(root: Path = ROOT, results: Results | None = None) -> dict[Path, str]:
    """Pages whose blocks differ from the JSON, with the regenerated text."""
    results = results or Results(root / "benchmarks" / "results")
    out = {}
    for page in pages(root):
        old = page.read_text()
        new = render(old, results, str(page.relative_to(root)))
        if new != old:
            out[page] = new
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report pages whose blocks differ; write nothing")
    args = parser.parse_args(argv)
    changed = stale()
    for page, text in changed.items():
        rel = page.relative_to(ROOT)
        if args.check:
            print(f"{rel}: generated blocks differ from benchmarks/results; run python benchmarks/readme_tables.py",
                  file=sys.stderr)
        else:
            page.write_text(text)
            print(f"rewrote {rel}", file=sys.stderr)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
