"""Studies behind treat's default: collapse, spot meter, fine-tune budget and lr, fallback lr, early stop, paste place,
keep original."""

from __future__ import annotations

from typing import Any

from tables.base import Results, markdown_table, num, pct, pm, source, table


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


@table("spot_meter", pending=True)
def spot_meter(r: Results) -> str:
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


def budget_table(r: Results, name: str) -> str:
    d = r[name]
    rows = [[family, epochs, f"{pct(b['control_test']['mean'])} ± {pct(b['control_test']['std'])}",
             f"{pct(b['default_test']['mean'])} ± {pct(b['default_test']['std'])}",
             f"{pct(b['control_swap']['mean'])} / {pct(b['default_swap']['mean'])}",
             f"{pct(b['gap_control']['mean'], 0)}% / {pct(b['gap_default']['mean'], 0)}%",
             f"{sum(b['use_treated'])} of {len(b['use_treated'])}",
             ", ".join(f"{100 * (run['default']['test'] - run['control']['test']):+.1f}" for run in b["runs"]),
             ", ".join(run["chosen"] for run in b["runs"])]
            for family, budgets in d["families"].items() for epochs, b in budgets.items()]
    seeds = "development" if d.get("development_seeds", True) else "report"
    versions = {run.get("treat_version") for budgets in d["families"].values() for b in budgets.values()
                for run in b["runs"]}
    version = f" (treat v{versions.pop()})" if len(versions) == 1 and None not in versions else ""
    return (markdown_table(["family", "fine-tune epochs", "control test", "default test", "swap control / default",
                            "gap recovered control / default", "verdict: use treated", "default − control test per seed",
                            "chosen per seed"], rows)
            + f"\n\n{d['arch']}, exact masks, {seeds} seeds {', '.join(map(str, d['seeds']))}{version}; every option "
              "of `treat` at its default except the epochs (both arms).\n\n" + source(name))


@table("finetune_budget", pending=True)
def finetune_budget(r: Results) -> str:
    return budget_table(r, "finetune_budget")


@table("finetune_budget_resnet20", pending=True)
def finetune_budget_resnet20(r: Results) -> str:
    return budget_table(r, "finetune_budget_resnet20")


@table("finetune_budget_resnet20_dev", pending=True)
def finetune_budget_resnet20_dev(r: Results) -> str:
    return budget_table(r, "finetune_budget_resnet20_dev")


@table("finetune_lr", pending=True)
def finetune_lr(r: Results) -> str:
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


def early_stop_runs(d: dict, version: str = "v4") -> str:
    rows = []
    for run in d["runs"]:
        h, s = run["histories"], run["select_swap"]
        rows.append([f"{run['spec']} · {run['arch']} · {run['masks']}", run["seed"], run["chosen"],
                     " → ".join(pct(v) for v in h["counterfactual"]), pct(s["last-layer"]),
                     pct(s["counterfactual-low-lr"]) if "counterfactual-low-lr" in s else ""])
    return markdown_table(["cell", "seed", f"chosen ({version})", "counterfactual select swap per epoch", "re-fit head",
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


@table("early_stop_check", pending=True)
def early_stop_check(r: Results) -> str:
    d = r["early_stop_check"]
    m = str(d["shipped_margin"])
    safe = [float(k) for k, v in d["margins"].items() if v["changed"] == 0]
    return (early_stop_runs(d, f"v{d['treat_version']}") + f"\n\nDevelopment seeds {', '.join(map(str, d['seeds']))} of "
            f"{', '.join(d['cells'])}, a cell the margin was not chosen on; select-swap accuracy %. Shipped "
            + stops(m, d["margins"][m]) + f". The smallest margin that stops no run that chose the fine-tune here: "
            f"{min(safe) if safe else 'none of the grid'}. It chooses nothing.\n\n" + source("early_stop_check"))


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


@table("annotated_minority", pending=True)
def annotated_minority(r: Results) -> str:
    d = r["annotated_minority"]
    rows = [[seed, pct(share)] for seed, share in d["annotated_off_hue"].items()]
    return (markdown_table(["seed", "annotated images whose hue is not their class's %"], rows)
            + f"\n\ntint-mnist, {d['arch']} vanilla models, the {d['per_class']} least confident training images "
              f"per class that `treat` annotates; over the whole training split: {pct(d['train_off_hue'])}%.\n\n"
            + source("annotated_minority"))


@table("fallback_lr", pending=True)
def fallback_lr(r: Results) -> str:
    d = r["fallback_lr"]
    shares = sorted(d["select_swap"], key=float)
    rows = [[cell, *(f"{pct(v[s]['select_swap'])} / {pct(v[s]['test'])}" for s in shares)]
            for cell, v in d["per_cell"].items()]
    rows.append(["**all runs**", *(f"{pct(d['select_swap'][s])} / {pct(d['test'][s])}" for s in shares)])
    decision = (f"The rule picks lr × {d['ship']}" if d["ship"] is not None
                else "No share beats lr × 0.2 under the rule") + f"; treat ships lr × {d['shipped']}"
    return (markdown_table(["cell", *(f"lr × {s}: select swap / test" for s in shares)], rows)
            + f"\n\nDevelopment seeds {', '.join(map(str, d['seeds']))}, exact masks, the fallback's fine-tune alone "
              f"(3 epochs); means over seeds. **{decision}.**\n\n" + source("fallback_lr"))


def draw_table(r: Results, name: str) -> str:
    d = r[name]
    def mean(runs: list[dict[str, Any]], key: str) -> str:
        return pct(sum(run[key] for run in runs) / len(runs))

    rows = [[kind, f"{mean(b['runs'], 'vanilla_test')} → {mean(b['runs'], 'clean_test')}", pm(b["control_test"], 1),
             pm(b["default_test"], 1),
             ", ".join(f"{100 * (run['default']['test'] - run['control']['test']):+.1f}" for run in b["runs"]),
             f"{pct(b['gap_control']['mean'], 0)}% / {pct(b['gap_default']['mean'], 0)}%",
             f"{sum(b['use_treated'])} of {len(b['use_treated'])}", ", ".join(run["chosen"] for run in b["runs"]),
             f"{mean(b['runs'], 'annotated_confidence')} / {mean(b['runs'], 'annotated_misread')}",
             f"{mean(b['runs'], 'annotated_off_cue')} / {mean(b['runs'], 'train_off_cue')}"
             if b["runs"][0]["annotated_off_cue"] is not None else "–"]
            for kind, b in d["draws"].items()]
    seeds = "development" if d["development_seeds"] else "report"
    return (markdown_table(["draw", "vanilla → clean test", "control test", "default test",
                            "default − control test per seed", "gap recovered control / default", "verdict: use treated",
                            "chosen per seed",
                            "annotated: vanilla confidence % / misread %",
                            "frame not the class's colour %: annotated / training"], rows)
            + f"\n\n{d['family']} · {d['arch']}, exact masks, {seeds} seeds {', '.join(map(str, d['seeds']))}; every "
              "option of `treat` at its default, only the annotated images differ (20 per class).\n\n" + source(name))


for _name in ("annotation_draw_dev", "annotation_draw"):  # development seeds, then report seeds
    table(_name, pending=True)(lambda r, name=_name: draw_table(r, name))
