"""The treatment matrix: every arm per cell, its goals, the swap meter's ranking and the changes of the default."""

from __future__ import annotations

from typing import Any

from modeldoctor.doctor.search import SIGNIFICANCE, annotation_factor
from tables.base import Results, markdown_table, not_measured, num, pct, source, table

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


@table("treatment_matrix", pending=True)
def treatment_matrix(r: Results) -> str:
    doc = r["treatment_matrix"]["cells"]
    cells = [c for c in doc if c["method"] != "verdict"]
    verdicts = {(c["family"], c["arch"], c["masks"]): c for c in doc if c["method"] == "verdict"}
    blocks = []
    for key in dict.fromkeys((c["family"], c["arch"], c["masks"]) for c in cells):
        rows = {c["method"]: c for c in cells if (c["family"], c["arch"], c["masks"]) == key}
        body = [[label + earlier(c), f"{pct(c['test_mean'])} ± {pct(c['test_std'])}", pct(c["swap_mean"]),
                 pct(c["val_mean"]),
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


def earlier(row: dict[str, Any]) -> str:
    """The note on an arm kept from an earlier run of its cell (``treatment_matrix.merge``)."""
    return f" (treat v{row['treat_version']}, earlier baselines)" if row.get("earlier_baselines") else ""


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


def moved_text(row: dict[str, Any]) -> str:
    """Test accuracy with the share of the gap it recovered: the share compares across runs on other baselines."""
    return f"{pct(row['test_mean'])} ({pct(row['gap_recovered'], 0)}%)"


def version_change(r: Results, old_name: str, new_name: str, versions: bool = True) -> str:
    """Cell by cell, what a change of the shipped default did: the summary ``old_name`` against ``new_name``, test
    accuracy (gap recovered)."""
    if not (r.has(old_name) and r.has(new_name)):
        return not_measured(old_name)

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
            cells.append(f"{moved_text(a)} → {moved_text(b)}" if a and b else "")
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


@table("treatment_matrix_dev", pending=True)
def treatment_matrix_dev(r: Results) -> str:
    shown = ("vanilla", "control", "default", "clean", "do_no_harm_control", "do_no_harm")
    rows = [[c["family"], c["arch"], c["masks"], c["method"], f"{pct(c['test_mean'])} ± {pct(c['test_std'])}",
             pct(c["swap_mean"]), ", ".join(map(str, c["seeds"]))]
            for c in r["treatment_matrix_dev"]["cells"] if c["method"] in shown]
    chosen = "; ".join(f"{c['family']} · {c['arch']}: {', '.join(c['chosen'])}"
                       for c in r["treatment_matrix_dev"]["cells"] if c["method"] == "verdict")
    return (markdown_table(["family", "architecture", "masks", "arm", "test", "swap", "development seeds"], rows)
            + f"\n\nChosen candidate per seed: {chosen}.\n\n" + source("treatment_matrix_dev"))


@table("matrix_reproduce", pending=True)
def matrix_reproduce(r: Results) -> str:
    d = r["matrix_reproduce"]
    cells = d["cells"]

    def pair(c: dict[str, Any], arm: str) -> str:
        return f"{pct(c['matrix'][arm]['test_mean'])} / {pct(c['fresh'][arm]['test_mean'])}"

    def goals(side: dict[str, Any]) -> str:
        return f"{sum(side['goals'].values())} of {len(side['goals'])}"

    def paired(row: dict[str, Any]) -> str:
        return f"{pct(row['paired_vs_control'])} ± {pct(row['paired_vs_control_std'])}"

    def tally(side: str) -> str:
        met = {g: sum(c[side]["goals"][g] for c in cells.values()) for g in ("gap_80", "above_2_std", "not_below_1_std")}
        low = min(cells, key=lambda k: cells[k][side]["default"]["gap_recovered"])
        return (f"≥ 80% of the gap in {met['gap_80']}, > 2 control std above the control in {met['above_2_std']}, "
                f"never more than 1 std below it in {met['not_below_1_std']} (lowest gap: {low.replace('/', ' · ')} "
                f"{pct(cells[low][side]['default']['gap_recovered'], 0)}%)")

    rows = [[cell.replace("/", " · "), pair(c, "vanilla"), pair(c, "control"), pair(c, "default"), pair(c, "recommended"),
             f"{pct(c['matrix']['default']['gap_recovered'], 0)}% / {pct(c['fresh']['default']['gap_recovered'], 0)}%",
             " / ".join(paired(c[side]["default"]) for side in ("matrix", "fresh")),
             f"{num(c['matrix']['paired_in_control_std'], 1)} / {num(c['fresh']['paired_in_control_std'], 1)}",
             f"{goals(c['matrix'])} / {goals(c['fresh'])}", "yes" if c["same_vanilla"] else "no"]
            for cell, c in cells.items()]
    missing = f" Not re-run: {', '.join(c.replace('/', ' · ') for c in d['not_rerun'])}." if d["not_rerun"] else ""
    return (markdown_table(["cell", "vanilla test: matrix / fresh", "control", "default", "recommended", "gap recovered",
                            "default − control (paired, test)", "… in control std", "goals met", "same baselines"], rows)
            + f"\n\nReport seeds {', '.join(map(str, d['seeds']))}, means; \"fresh\": the shipped default re-run "
              "through the matrix's own code on baselines trained in this machine's cache, every option at its "
              "default; recommended: what the verdict tells a user to keep; goals met: of the issue's three, by the "
              f"default. Of {len(cells)} background cells the matrix meets "
              f"{tally('matrix')}; on the fresh baselines {tally('fresh')}.{missing}\n\n" + source("matrix_reproduce"))
