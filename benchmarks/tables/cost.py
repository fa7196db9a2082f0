"""What diagnosis, training, treatment and scaling out cost in time and memory."""

from __future__ import annotations

from tables.base import Results, markdown_table, num, pct, source, table, thousands


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
