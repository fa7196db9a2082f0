"""The shortcut families: the treatment against its control, the shortcut check, the swap meter, the ViT."""

from __future__ import annotations

from typing import Any

from tables.base import Results, markdown_table, num, pct, pm, source, table


def shortcut_family(r: Results, family: str) -> dict[str, Any]:
    return r["shortcut"]["families"][family]


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
