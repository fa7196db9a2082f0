"""Shortcut check benchmark: does `diagnose --masks` tell a shortcut model from a clean one, on the model alone?

Per family (shortcut-mnist, border-mnist, spot-mnist: background cues; tint-mnist: the cue is the digit's
colour, on the object, where the honest answer is "not a background shortcut") and seed: the vanilla
simple-cnn-s2 (trained on the shortcut data) and the clean reference (trained on ``:clean``), the same models and
recipe as ``benchmarks/shortcut.py`` (its cache is
reused when present: ``results/cache/shortcut2/``; otherwise each is trained for 10 epochs and cached there).
Each model gets the shortcut check (:mod:`modeldoctor.doctor.shortcut`) on 20 masked training images per class of
the shortcut family (the user's own masked images; normalised as the model was trained), each pasted on 3 other
classes' erased backgrounds, once with the exact digit masks and once with their bounding boxes (box masks carry
background inside the box).  Recorded: the verdict, donor-follow share and its interval, per-class swap accuracy
and the reliance measures (activation share at the treatment's space layer, Grad-CAM share, probability drop).

Timing: ``api.diagnose_model`` on the seed-0 vanilla shortcut-mnist model (training split, last conv, T = 100,
J = 10) without and with ``--masks builtin``, best of 2 each.

With ``--treated``: on shortcut-mnist, the shipped treatment (``api.treat`` with its defaults: candidates on
held-out swaps, 20 masks per class, 3 epochs) and its matched control per seed, and the reliance measures of
original / control / treated on composites of masked training images the treatment did not annotate (test
backgrounds are decorrelated from the class, so "the background's class" means nothing there).

Usage: python benchmarks/shortcut_check.py [--seeds 3] [--treated]; last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from modeldoctor import api  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.sources import load_data  # noqa: E402
from modeldoctor.doctor.arms import split_metrics  # noqa: E402
from modeldoctor.doctor.diagnosis import DiagnosisOptions  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import TrainConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shortcut import CACHE, FINETUNE, MODEL, base_model  # noqa: E402  (the same models, recipe and cache)

RESULTS = Path(__file__).resolve().parent / "results"
PER_CLASS = 20
MEASURES = ("swap_accuracy", "follows_background", "activation_share", "gradcam_share", "probability_drop")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def box_masks(masks: Any, ids: list[str]) -> dict[str, torch.Tensor]:
    """The bounding box of each exact mask, filled: what a user drawing boxes would give."""
    out = {}
    for sid in ids:
        m = masks[sid].bool()
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        box = torch.zeros_like(m)
        if len(rows):
            box[int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1] = True
        out[sid] = box
    return out


def summary(check: dict[str, Any]) -> dict[str, Any]:
    v = check["verdict"]
    return {"verdict": v["label"], "follow": v["follow"], "follow_ci": v["follow_ci"], "own": v["own"],
            "excess_ci": v["excess_ci"], "composites": v["composites"], "overall": check["overall"],
            "per_class": {c: {k: r[k] for k in MEASURES} for c, r in check["per_class"].items()},
            "tightness": {k: check["tightness"][k] for k in ("object_area", "bbox_fill", "box_like")}}


def stats(values: list[float]) -> dict[str, float]:
    t = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0, "min": float(t.min()),
            "max": float(t.max())}


def family_checks(family: str, seeds: list[int]) -> dict[str, Any]:
    data = load_data(family)
    clean_data = load_data(f"{family}:clean")
    train_ids = [sid for sid in data.train.ids if sid in data.masks]
    boxes = box_masks(data.masks, train_ids)
    norms = {"vanilla": (list(data.mean), list(data.std)), "clean": (list(clean_data.mean), list(clean_data.std))}
    rows: dict[str, Any] = {}
    for seed in seeds:
        for kind, spec, own in (("vanilla", family, data), ("clean", f"{family}:clean", clean_data)):
            data.set_normalisation(*norms["vanilla"])  # the vanilla model trains on its own statistics
            model = base_model(spec, seed, own)
            data.set_normalisation(*norms[kind])  # the shortcut family's images, as this model was trained
            for mask_kind, masks in (("exact", data.masks), ("box", boxes)):
                check = api.shortcut_check(model, data, masks, "train", PER_CLASS, seed=seed)
                rows[f"{kind}/{mask_kind}/{seed}"] = summary(check)
                log(f"{family} {kind} seed {seed} {mask_kind}: {check['verdict']['message']}")
    table: dict[str, Any] = {}
    for kind in ("vanilla", "clean"):
        for mask_kind in ("exact", "box"):
            runs = [rows[f"{kind}/{mask_kind}/{s}"] for s in seeds]
            table[f"{kind}_{mask_kind}"] = {
                "verdicts": [r["verdict"] for r in runs],
                **{m: stats([r["overall"][m] for r in runs]) for m in MEASURES},
                "per_class_swap_accuracy": [stats([r["per_class"][c]["swap_accuracy"] for r in runs])["mean"]
                                            for c in data.class_names],
                "per_class_gradcam_share": [stats([r["per_class"][c]["gradcam_share"] for r in runs])["mean"]
                                            for c in data.class_names]}
    return {"runs": rows, "table": table}


def timing(seed: int = 0) -> dict[str, float]:
    data = load_data("shortcut-mnist")
    model = base_model("shortcut-mnist", seed, data)
    options = DiagnosisOptions(seed=seed)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(2):
        for key, masks in (("without", None), ("with", data.masks)):
            started = time.perf_counter()
            api.diagnose_model(model, data, None, options, masks=masks)
            times[key].append(time.perf_counter() - started)
    best = {k: min(v) for k, v in times.items()}
    return {"without_s": best["without"], "with_s": best["with"], "ratio": best["with"] / best["without"]}


def treated_reliance(seeds: list[int]) -> dict[str, Any]:
    """Original / control / treated reliance on composites of masked training images the treatment did not annotate
    (only training backgrounds carry their class: test decorrelates them), per seed."""
    data = load_data("shortcut-mnist")
    rows: dict[str, Any] = {}
    for seed in seeds:
        vanilla = base_model("shortcut-mnist", seed, data)
        path = CACHE / f"arms-default-shortcut-mnist-seed{seed}.pt"
        arms: dict[str, torch.nn.Module] = {}
        if path.exists():
            saved = torch.load(path, weights_only=True)
            for arm in ("control", "treated"):
                arms[arm] = build_model(MODEL, 10, data.in_channels, data.input_size)
                arms[arm].load_state_dict(saved[arm])
            annotated = set(saved["annotated"])
        else:
            result = api.treat(vanilla, None, data, annotate_per_class=PER_CLASS, seed=seed,
                               train_config=TrainConfig(**{**FINETUNE.to_dict(), "seed": seed}), epochs=3)
            assert result.control is not None
            arms = {"control": result.control, "treated": result.treated}
            annotated = set(result.annotated) | set(result.held_out)
            torch.save({**{k: m.state_dict() for k, m in arms.items()}, "annotated": sorted(annotated)}, path)
        masks = {sid: data.masks[sid] for sid in data.train.ids if sid in data.masks and sid not in annotated}
        for name, model in [("original", vanilla), *arms.items()]:
            check = api.shortcut_check(model, data, masks, "train", PER_CLASS, seed=seed)
            rows[f"{name}/{seed}"] = {**summary(check), "test": float(split_metrics(model, data.val, data.test, 10)
                                                                        ["test"]["accuracy"])}
            log(f"treated reliance seed {seed} {name}: {check['verdict']['message']}; {check['overall']}")
    table = {name: {m: stats([rows[f"{name}/{s}"]["overall"][m] for s in seeds]) for m in MEASURES}
             | {"test": stats([rows[f"{name}/{s}"]["test"] for s in seeds]),
                "verdicts": [rows[f"{name}/{s}"]["verdict"] for s in seeds]}
             for name in ("original", "control", "treated")}
    return {"runs": rows, "table": table}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--family", default="shortcut-mnist,border-mnist,spot-mnist,tint-mnist")
    ap.add_argument("--treated", action="store_true", help="also the treatment's before/after reliance (shortcut-mnist)")
    args = ap.parse_args()
    started = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    families = {f: family_checks(f, seeds) for f in (x.strip() for x in args.family.split(",")) if f}
    report: dict[str, Any] = {"protocol": __doc__, "per_class": PER_CLASS, "seeds": seeds, "families": families,
                              "timing": timing()}
    if args.treated:
        report["treated"] = treated_reliance(seeds)
    report["seconds"] = time.time() - started
    write_json(RESULTS / "shortcut_check.json", report)
    line: dict[str, Any] = {"diagnose_with_masks_ratio": round(report["timing"]["ratio"], 3)}
    for family, result in families.items():
        t = result["table"]
        short = family.split("-")[0]
        line[f"{short}_verdicts"] = {k: sorted(set(t[k]["verdicts"])) for k in t}
        line[f"{short}_swap"] = {k: round(t[k]["swap_accuracy"]["mean"], 4) for k in t}
        line[f"{short}_gradcam_share"] = {k: round(t[k]["gradcam_share"]["mean"], 4) for k in t}
    if args.treated:
        line["treated"] = {arm: {m: [round(v[m]["mean"], 4), round(v[m]["std"], 4)]
                                 for m in ("test", "swap_accuracy", "activation_share", "gradcam_share", "probability_drop")}
                           for arm, v in report["treated"]["table"].items()}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
