"""README's results at a glance: one line per question, drawn from every results file."""

from __future__ import annotations

from tables.architectures import architecture_counts, recipe_val, transformer_counts
from tables.base import Results, markdown_table, num, pct, pm, source, table, thousands
from tables.matrix import ON_OBJECT
from tables.shortcut import vit_glance


def matrix_glance(r: Results) -> str:
    """The shipped default against its control over the treatment matrix's cells, test accuracy: how many
    background-shortcut cells meet each of the issue's goals, the worst cell, and the on-object family."""
    if not r.has("treatment_matrix"):
        return "not measured yet (treatment matrix)"
    cells = r["treatment_matrix"]["cells"]
    default = [c for c in cells if c["method"] == "default"]
    background = [c for c in default if c["family"] not in ON_OBJECT]
    worst = min(background, key=lambda c: c["gap_recovered"])
    gaps = sorted(c["gap_recovered"] for c in background)
    above = sum(c["paired_vs_control"] > 2 * c["control_std"] for c in background)
    below = sum(c["paired_vs_control"] < -c["control_std"] for c in background)
    verdicts = [u for c in cells if c["method"] == "verdict" for u in c["use_treated"]]
    checks = {(c["family"], c["arch"]): c["check"]["vanilla"] for c in cells if c["method"] == "verdict"}
    on_object = "; ".join(
        f"{c['family']} · {c['arch']} (cue on the object) {pct(c['test_mean'])} vs control "
        f"{pct(c['test_mean'] - c['paired_vs_control'])}, its shortcut check finding background reading on "
        f"{sum(v != 'not detectably' for v in checks[c['family'], c['arch']])} of {len(c['seeds'])} seeds"
        for c in default if c["family"] in ON_OBJECT)
    seeds = sorted({len(c["seeds"]) for c in default})
    return (f"shipped default (counterfactual backgrounds or last layer, chosen on held-out swaps), "
            f"{'–'.join(map(str, seeds))} report seeds per cell: in {sum(g >= 0.8 for g in gaps)} of "
            f"{len(background)} background-shortcut cells (families × architectures × exact / box / GrabCut masks) "
            f"it recovers ≥ 80% of the vanilla → clean gap (median "
            f"{pct(gaps[len(gaps) // 2], 0)}%; lowest {worst['family']} · {worst['arch']} · {worst['masks']} "
            f"{pct(worst['gap_recovered'], 0)}%), beats its control by > 2 control std in {above}, falls below it by "
            f"more than 1 std in {below}; its verdict recommended the treated arm in {sum(map(bool, verdicts))} of "
            f"{len(verdicts)} runs.{reproduced(r)} {on_object}")


def reproduced(r: Results) -> str:
    """How many re-run background cells meet all three goals on baselines trained in another session."""
    if not r.has("matrix_reproduce"):
        return ""
    cells = r["matrix_reproduce"]["cells"]
    met = sum(all(c["fresh"]["goals"].values()) for c in cells.values())
    low = min(cells, key=lambda k: cells[k]["fresh"]["default"]["gap_recovered"])
    return (f" Re-run on baselines trained in another session, {met} of {len(cells)} background cells meet all three "
            f"goals (lowest gap {low.replace('/', ' · ')} {pct(cells[low]['fresh']['default']['gap_recovered'], 0)}%).")


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
