"""Shortcut benchmark (the pre-matrix default, kept for comparison): does the space-wise treatment (activation
form, auto λ) repair a background shortcut beyond plain fine-tuning?  The shipped default is now measured by
``treatment_matrix.py``; ``results/shortcut.json`` was measured with the swap meter of that time (objects held out,
backgrounds from every annotated image, diffusion-filled erase).

Two shortcut families, both built from the 5,000 mnist5k digits (docs/protocols.md has the protocol):

* ``shortcut-mnist``: digits over ten background textures; texture = class in 90% of training images,
  independent of the class in validation and test;
* ``border-mnist``: digits in a frame of ten colours; colour = class in 90% of training *and validation*
  images (a user's validation data usually carries the shortcut), independent in test.

Per family and seed: the vanilla model (trained on the shortcut data) and the clean reference (trained on
``:clean``, same architecture and recipe) are trained from scratch and cached.  Every other row fine-tunes the
vanilla weights with the same recipe (5 epochs at the training lr, 16 annotated images appended to each batch,
checkpoint chosen by background-swap accuracy on the held-out quarter of the annotated images); only the loss
differs.  The control is that fine-tune with cross-entropy alone.  The masked input-gradient peer (Ross et al.)
gets the same budget and its own λ fraction, chosen on seed 0's swap accuracy from {0.01, 0.1, 1}.  Test
accuracy never chooses anything.  Last stdout line: one JSON object.

Usage: python benchmarks/shortcut.py [--seeds 3] [--family shortcut-mnist,border-mnist] [--worker SEED]
(workers compute and cache one seed each; the plain command then reports from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.bundle import DataBundle, ImageSplit  # noqa: E402
from modeldoctor.data.masks import default_expansion  # noqa: E402
from modeldoctor.data.sources import load_data  # noqa: E402
from modeldoctor.doctor.annotation import MaskBank, holdout_split, lowest_confidence  # noqa: E402
from modeldoctor.doctor.arms import split_metrics, swap_split, treat_and_control  # noqa: E402
from modeldoctor.doctor.treatment import TreatConfig  # noqa: E402
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import TrainConfig, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = bool(os.environ.get("SHORTCUT_SMOKE"))  # tiny end-to-end check of this script: 319 images, 1 epoch
CACHE = RESULTS / "cache" / ("shortcut2-smoke" if SMOKE else "shortcut2")
MODEL = "simple-cnn-s2"
BASE = TrainConfig(epochs=1 if SMOKE else 10, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                   schedule="cosine")
FINETUNE = TrainConfig(**{**BASE.to_dict(), "epochs": 1 if SMOKE else 5})
PER_CLASS = 20
PEER_FRACTIONS = [0.01, 0.1, 1.0]



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_model(spec: str, seed: int, bundle: DataBundle) -> torch.nn.Module:
    path = CACHE / f"{spec.replace(':', '_')}-seed{seed}.pt"
    if path.exists():
        return load_checkpoint(path)[0]
    torch.manual_seed(seed)
    model = build_model(MODEL, 10, bundle.in_channels, bundle.input_size)
    cfg = TrainConfig(**{**BASE.to_dict(), "seed": seed})
    started = time.time()
    fit(model, bundle.train, bundle.val, 10, cfg)
    meta = CheckpointMeta(MODEL, 10, bundle.in_channels, bundle.input_size, bundle.class_names, bundle.mean,
                          bundle.std, bundle.spec, cfg.to_dict(), split_metrics(model, bundle.val, bundle.test, 10))
    save_checkpoint(path, model, meta)
    log(f"{spec} seed {seed}: test {meta.metrics['test']['accuracy']:.4f} ({time.time() - started:.0f}s)")
    return model


def accuracies(metrics: dict[str, Any]) -> dict[str, float]:
    return {split: m["accuracy"] for split, m in metrics.items()}


def run(family: str, seed: int, name: str, bundle: DataBundle, vanilla: torch.nn.Module, bank: MaskBank,
        control: bool, **fields: Any) -> dict[str, Any]:
    """One treated fine-tune (and, with ``control``, its matched control), cached by its settings."""
    key = json.dumps([family, seed, name, fields, FINETUNE.to_dict(), control], sort_keys=True, default=str)
    path = CACHE / f"run-{family}-{seed}-{name}.json"
    if path.exists() and json.loads(path.read_text())["key"] == key:
        return json.loads(path.read_text())
    started = time.time()
    fields = dict(fields)
    convs = [n for n, m in vanilla.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if fields.pop("last_two", False):
        fields["space_layers"] = convs[-2:]
    cfg = TreatConfig(**{"expansion": default_expansion(bundle.input_size), "constraints": ("space",), **fields})
    arms = treat_and_control(vanilla, bundle, cfg, TrainConfig(**{**FINETUNE.to_dict(), "seed": seed}), None, bank,
                             control=control)
    result = {"key": key, "family": family, "seed": seed, "name": name, "config": cfg.to_dict(),
              "lambdas": arms["lambdas"], "original": accuracies(arms["original"]),
              "treated": accuracies(arms["treated"][1]), "weight_change": arms["weight_change"],
              "seconds": time.time() - started}
    if control:
        result["control"] = accuracies(arms["control"][1])
    write_json(path, result)
    log(f"{family} seed {seed} {name}: {result['treated']} ({result['seconds']:.0f}s)")
    return result


def stats(values: list[float]) -> dict[str, Any]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0, "n": len(t), "values": values}


def family_runs(family: str, seeds: list[int]) -> dict[str, Any]:
    bundle = load_data(family)
    clean_bundle = load_data(f"{family}:clean")
    if SMOKE:
        for b in (bundle, clean_bundle):
            keep = list(range(0, len(b.train), 11))  # every class, 319 images
            b.train = ImageSplit(b.train.labels[keep], [b.train.ids[i] for i in keep], b.mean, b.std,
                                 images=b.train.images[keep])
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        vanilla = base_model(family, seed, bundle)
        clean = base_model(f"{family}:clean", seed, clean_bundle)
        chosen = lowest_confidence(vanilla, bundle.train, list(bundle.train.ids), PER_CLASS, 10)
        bank = MaskBank.build(bundle.train, bundle.masks, chosen, bundle.input_size)
        rows = {"default": run(family, seed, "space_20_per_class", bundle, vanilla, bank, control=True)}
        # the clean reference on the same test images and on this seed's swap composites
        _, held = holdout_split(bank.pool, bundle.train.labels, TreatConfig.holdout_annotated, seed)
        swap = swap_split(bundle, bank, held, seed)
        rows["clean"] = {"treated": accuracies(split_metrics(clean, bundle.val, clean_bundle.test, 10, swap))}
        if seed == 0:
            peers = [run(family, 0, f"peer-fraction-{f}", bundle, vanilla, bank, control=False,
                         constraints=("input-gradient",), lam_fraction=f) for f in PEER_FRACTIONS]
            best = max(peers, key=lambda r: r["treated"]["swap"])
            write_json(CACHE / f"peer-{family}.json", {"lam_fraction": best["config"]["lam_fraction"],
                                                      "swap": {r["config"]["lam_fraction"]: r["treated"]["swap"]
                                                               for r in peers}})
        peer_path = CACHE / f"peer-{family}.json"
        while not peer_path.exists():
            time.sleep(10)
        peer_fraction = json.loads(peer_path.read_text())["lam_fraction"]
        rows["peer"] = run(family, seed, "input_gradient_20_per_class", bundle, vanilla, bank, control=False,
                           constraints=("input-gradient",), lam_fraction=peer_fraction)
        rows["paper"] = run(family, seed, "paper_layers_share_20_per_class", bundle, vanilla, bank, control=False,
                            form="share", last_two=True)
        per_seed[seed] = rows
    return per_seed


def summarise(family: str, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    seeds = sorted(per_seed)
    table: dict[str, Any] = {}
    names = {"vanilla": ("default", "original"), "clean_reference": ("clean", "treated"),
             "control": ("default", "control"), "space_20_per_class": ("default", "treated"),
             "input_gradient_20_per_class": ("peer", "treated"),
             "paper_layers_share_20_per_class": ("paper", "treated")}
    for row, (run_name, arm) in names.items():
        table[row] = {split: stats([per_seed[s][run_name][arm][split] for s in seeds]) for split in ("val", "test", "swap")}
    gap = [per_seed[s]["clean"]["treated"]["test"] - per_seed[s]["default"]["original"]["test"] for s in seeds]
    for row in ("control", "space_20_per_class", "input_gradient_20_per_class", "paper_layers_share_20_per_class"):
        table[f"gap_recovered_{row}"] = stats([(table[row]["test"]["values"][i] - table["vanilla"]["test"]["values"][i])
                                               / gap[i] if gap[i] else float("nan") for i in range(len(seeds))])
    for row in ("space_20_per_class", "input_gradient_20_per_class", "paper_layers_share_20_per_class"):
        table[f"paired_{row}_minus_control"] = {
            split: stats([table[row][split]["values"][i] - table["control"][split]["values"][i] for i in range(len(seeds))])
            for split in ("test", "swap")}
    table["paired_space_minus_input_gradient"] = stats(
        [table["space_20_per_class"]["test"]["values"][i] - table["input_gradient_20_per_class"]["test"]["values"][i]
         for i in range(len(seeds))])
    table["lambdas"] = {s: {k: per_seed[s][k]["lambdas"] for k in ("default", "peer", "paper")} for s in seeds}
    table["weight_change_seed0"] = per_seed[seeds[0]]["default"]["weight_change"]
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--family", default="shortcut-mnist,border-mnist")
    ap.add_argument("--worker", type=int, default=None, help="compute (and cache) only this seed")
    args = ap.parse_args()
    started = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    seeds = [args.worker] if args.worker is not None else list(range(args.seeds))
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    results = {family: family_runs(family, seeds) for family in families}
    if args.worker is not None:
        print(json.dumps({"worker": args.worker, "seconds": round(time.time() - started)}))
        return
    report = {"protocol": __doc__, "finetune": FINETUNE.to_dict(), "per_class": PER_CLASS, "seeds": seeds,
              "families": {family: summarise(family, per_seed) for family, per_seed in results.items()},
              "seconds": time.time() - started}
    write_json(RESULTS / ("shortcut-smoke.json" if SMOKE else "shortcut.json"), report)
    main_family = report["families"].get("shortcut-mnist") or next(iter(report["families"].values()))
    summary = {key: round(main_family[key]["test"]["mean"], 4) for key in
               ("vanilla", "clean_reference", "control", "space_20_per_class", "input_gradient_20_per_class")}
    summary["gap_recovered_space_20"] = round(main_family["gap_recovered_space_20_per_class"]["mean"], 4)
    for family, table in report["families"].items():
        short = family.split("-")[0]
        summary[f"{short}_test"] = {k: [round(table[k]["test"]["mean"], 4), round(table[k]["test"]["std"], 4)]
                                    for k in ("vanilla", "clean_reference", "control", "space_20_per_class",
                                              "input_gradient_20_per_class")}
        summary[f"{short}_swap"] = {k: round(table[k]["swap"]["mean"], 4)
                                    for k in ("vanilla", "control", "space_20_per_class")}
        summary[f"{short}_gap_recovered"] = round(table["gap_recovered_space_20_per_class"]["mean"], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
