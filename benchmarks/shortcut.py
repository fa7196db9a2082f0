"""Shortcut-MNIST benchmark: can Model Doctor's constraints undo a background shortcut?

Vanilla (trained on shortcut-mnist, texture kind = class in 95% of training images) and the clean
reference (shortcut-mnist:clean, texture independent of class) are trained from scratch per seed and
cached.  Every other row fine-tunes the vanilla model from its weights with the same optimiser, epochs,
data order and seed; only the loss differs.  λ is chosen on the validation split (seed 0, 20 masks per
class) and then fixed.  Test accuracy is reported as mean ± std over the seeds; every checkpoint is the
best validation epoch.  Each run is cached under benchmarks/results/cache/shortcut/ so an interrupted
benchmark resumes.  Last stdout line: one JSON object.

Usage: python benchmarks/shortcut.py [--seeds 3] [--sweep-seeds 1]
In parallel: --worker 0, --worker 1, --worker 2, --sweep-worker first, --sweep-worker last (each one thread),
then the plain command, which finds every run cached and only writes the report; --cached-only reports
whatever has finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.bundle import ImageSplit  # noqa: E402
from modeldoctor.data.masks import default_expansion, expand_mask  # noqa: E402
from modeldoctor.data.sources import load_data  # noqa: E402
from modeldoctor.doctor.diagnosis import diagnose  # noqa: E402
from modeldoctor.doctor.treatment import (  # noqa: E402
    MaskBank,
    TreatConfig,
    batch_mixer,
    finetune,
    lowest_confidence,
    split_metrics,
    treatment_loss,
)
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import TrainConfig, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = bool(os.environ.get("SHORTCUT_SMOKE"))  # tiny end-to-end check of this script: 320 images, 1 epoch
CACHE = RESULTS / "cache" / ("shortcut-smoke" if SMOKE else "shortcut")
CACHED_ONLY = False  # --cached-only: report the runs finished so far (rows list their n), compute nothing
MODEL = "simple-cnn-s2"
BASE = TrainConfig(epochs=1 if SMOKE else 10, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine")
FT_EPOCHS = 1 if SMOKE else 2
FT_LR = 0.01  # 0.2 x the training lr, fixed before any treatment was run
MIX = 16  # annotated images appended to each batch of 64 when masks are few (treated and control alike)
LAMBDA_GRID = {"space": [1.0, 3.0, 10.0], "input-gradient": [0.001, 0.01, 0.1]}
CHANNEL_LAMBDA = 1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_model(kind: str, seed: int, bundles: dict) -> torch.nn.Module:
    path = CACHE / f"{kind}-seed{seed}.pt"
    if path.exists():
        return load_checkpoint(path)[0]
    bundle = bundles[kind]
    torch.manual_seed(seed)
    model = build_model(MODEL, 10, 1, bundle.input_size)
    cfg = TrainConfig(**{**BASE.to_dict(), "seed": seed})
    started = time.time()
    fit(model, bundle.train, bundle.val, 10, cfg)
    meta = CheckpointMeta(MODEL, 10, 1, bundle.input_size, bundle.class_names, bundle.mean, bundle.std,
                          bundle.spec, cfg.to_dict(), split_metrics(model, bundle.val, bundle.test, 10))
    save_checkpoint(path, model, meta)
    log(f"{kind} seed {seed}: test {meta.metrics['test']['accuracy']:.4f} ({time.time() - started:.0f}s)")
    return model


def diagnostics(model: torch.nn.Module, bundle, n: int = 256) -> dict[str, float]:
    """Logit scale and where the input gradient of the true-class logit lies (test images, digit masks)."""
    x = torch.stack([bundle.test[i][0] for i in range(n)]).requires_grad_(True)
    y = bundle.test.labels[:n]
    masks = torch.stack([bundle.masks[bundle.test.ids[i]] for i in range(n)])
    model.eval()
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), x)
    g = grad.abs().squeeze(1)
    obj = expand_mask(masks, 5)
    return {"logit_std": float(logits.detach().std()), "input_grad_fg": float((g * obj).sum() / n),
            "input_grad_bg_share": float((g * ~obj).sum() / g.sum())}


def run(name: str, seed: int, bundles: dict, vanilla: torch.nn.Module, relevant: dict, cfg: TreatConfig,
        per_class: int | None) -> dict:
    key = hashlib.sha1(json.dumps([seed, per_class, cfg.to_dict(), FT_EPOCHS, FT_LR, MIX]).encode()).hexdigest()[:12]
    path = CACHE / f"run-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if CACHED_ONLY:
        return None
    bundle = bundles["vanilla"]
    started = time.time()
    masks = {sid: bundle.masks[sid] for sid in bundle.train.ids}
    chosen = lowest_confidence(vanilla, bundle.train, list(masks), per_class, 10)
    bank = MaskBank.build(bundle.train, masks, chosen, bundle.input_size)
    mix = MIX if per_class is not None else 0
    model = load_checkpoint(CACHE / f"vanilla-seed{seed}.pt")[0]
    cfg = TreatConfig(**{**cfg.to_dict(), "mix_annotated": mix})
    loss_fn = treatment_loss(model, cfg, relevant, bank, batch_mixer(bundle.train, bank.pool, mix, seed))
    train_cfg = TrainConfig(**{**BASE.to_dict(), "epochs": FT_EPOCHS, "lr": FT_LR, "seed": seed})
    finetune(model, bundle.train, bundle.val, 10, train_cfg, loss_fn, desc=name)
    result = {"name": name, "seed": seed, "per_class": per_class, "annotated": len(bank.pool),
              "config": cfg.to_dict(), **{k: v["accuracy"] for k, v in split_metrics(model, bundle.val, bundle.test, 10).items()},
              **diagnostics(model, bundle), "seconds": time.time() - started}
    write_json(path, result)
    log(f"{name} seed {seed}: val {result['val']:.4f} test {result['test']:.4f} ({result['seconds']:.0f}s)")
    return result


def mean_std(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0, "n": len(t), "values": values}


def relevant_for(tag: str, model: torch.nn.Module, bundle, layers: list[str]) -> dict[str, torch.Tensor]:
    path = CACHE / f"relevant-{tag}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    diag = diagnose(model, bundle.train, layers=layers, samples_per_class=50)
    found = {name: diag.relevant(name) for name in layers}
    torch.save(found, path)
    return found


def choose_lambdas(treat) -> dict[str, float]:
    """λ on validation: seed 0, 20 masks per class; written once, read by every worker."""
    path = CACHE / "lambda.json"
    if path.exists():
        return json.loads(path.read_text())
    chosen = {}
    for constraint, grid in LAMBDA_GRID.items():
        lam_key = "lam_space" if constraint == "space" else "lam_input_gradient"
        trials = [treat(f"select-{constraint}-{lam}", 0, 20, constraints=(constraint,), **{lam_key: lam})
                  for lam in grid]
        chosen[lam_key] = max(trials, key=lambda r: r["val"])["config"][lam_key]
        log(f"chosen on validation: {lam_key} = {chosen[lam_key]} (val {[r['val'] for r in trials]})")
    chosen["lam_channel"] = CHANNEL_LAMBDA
    write_json(path, chosen)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep-seeds", type=int, default=1)
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--worker", type=int, default=None,
                    help="only compute (and cache) this seed's runs; seed 0 also chooses λ")
    ap.add_argument("--cached-only", action="store_true", help="report only runs already cached")
    ap.add_argument("--sweep-worker", choices=["first", "last"], default=None,
                    help="only compute (and cache) the sweeps, from the first or the last, once seed 0's model and λ exist")
    args = ap.parse_args()
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    started = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    bundles = {"vanilla": load_data("shortcut-mnist"), "clean": load_data("shortcut-mnist:clean")}
    if SMOKE:
        for b in bundles.values():
            b.train = ImageSplit(b.train.labels[:320], b.train.ids[:320], b.mean, b.std, images=b.train.images[:320])
    convs = ["features.0", "features.3", "features.7", "features.11"]
    rows: dict[str, list[dict]] = {}
    vanillas: dict[int, torch.nn.Module] = {}
    relevants: dict[int, dict[str, torch.Tensor]] = {}
    seeds = range(args.seeds) if args.worker is None else [args.worker]
    if args.sweep_worker:
        seeds = []
        while not all((CACHE / f).exists() for f in ("vanilla-seed0.pt", "lambda.json")):
            time.sleep(10)
        vanillas[0], relevants[0] = load_checkpoint(CACHE / "vanilla-seed0.pt")[0], {}
    if CACHED_ONLY:
        seeds = [s for s in seeds if all((CACHE / f"{k}-seed{s}.pt").exists() for k in ("vanilla", "clean"))
                 and (CACHE / f"relevant-seed{s}.pt").exists()]
    for seed in seeds:
        vanillas[seed] = base_model("vanilla", seed, bundles)
        clean = base_model("clean", seed, bundles)
        for kind, model, bundle in (("vanilla", vanillas[seed], bundles["vanilla"]),
                                    ("clean_reference", clean, bundles["clean"])):  # same val/test images
            rows.setdefault(kind, []).append({"seed": seed, **{k: v["accuracy"] for k, v in split_metrics(
                model, bundle.val, bundle.test, 10).items()}, **diagnostics(model, bundle)})
        relevants[seed] = relevant_for(f"seed{seed}", vanillas[seed], bundles["vanilla"], convs[-1:])

    def treat(name: str, seed: int, per_class: int | None, relevant: dict | None = None, **cfg) -> dict | None:
        cfg.setdefault("expansion", default_expansion(bundles["vanilla"].input_size))  # 5 px at 48 px
        return run(name, seed, bundles, vanillas[seed], relevant or relevants[seed], TreatConfig(**cfg), per_class)

    def add(table: dict, name: str, result: dict | None, **extra) -> None:
        if result is not None:
            table.setdefault(name, []).append({**extra, **result})

    def lambdas_for(constraints: tuple[str, ...], lam: dict[str, float]) -> dict[str, float]:
        keys = {"space": "lam_space", "channel": "lam_channel", "input-gradient": "lam_input_gradient"}
        return {keys[c]: lam[keys[c]] for c in constraints}

    # Most important rows first (CPU is shared); controls do not wait for λ.
    for seed in seeds:
        add(rows, "control_20_per_class", treat("control_20_per_class", seed, 20, constraints=()))
    if CACHED_ONLY:
        lam = json.loads((CACHE / "lambda.json").read_text()) if (CACHE / "lambda.json").exists() else {}
    elif args.worker in (None, 0) and not args.sweep_worker:
        lam = choose_lambdas(treat)
    else:
        while not (CACHE / "lambda.json").exists():
            time.sleep(10)
        lam = json.loads((CACHE / "lambda.json").read_text())
    plan = [("space_20_per_class", ("space",), 20), ("input_gradient_20_per_class", ("input-gradient",), 20),
            ("channel", ("channel",), None), ("control_all_masks", (), None),
            ("all_20_per_class", ("space", "channel"), 20), ("space_all_masks", ("space",), None),
            ("input_gradient_all_masks", ("input-gradient",), None), ("all_all_masks", ("space", "channel"), None)]
    for seed in seeds if lam else []:
        for name, constraints, per_class in plan:
            add(rows, name, treat(name, seed, per_class, constraints=constraints, **lambdas_for(constraints, lam)))
    sweeps: dict[str, list[dict]] = {}
    if not args.skip_sweeps and (args.worker is None or args.sweep_worker) and lam:
        sp = lam["lam_space"]
        every_layer = {} if CACHED_ONLY and not (CACHE / "relevant-all-seed0.pt").exists() else \
            relevant_for("all-seed0", vanillas[0], bundles["vanilla"], convs)  # for the depth sweep
        todo = []
        for seed in range(args.sweep_seeds):
            for pct in (2, 4, 8, 12, 20):
                per_class = round(len(bundles["vanilla"].train) * pct / 100 / 10)
                todo.append(("annotation_%", pct, f"annot-{pct}%", seed, per_class, {"constraints": ("space",)}))
            for pixels in (0, 2, 5, 10):
                todo.append(("expansion_px", pixels, f"expand-{pixels}", seed, 20,
                             {"constraints": ("space",), "expansion": pixels}))
            for layer in convs:
                todo.append(("depth_space", layer, f"depth-space-{layer}", seed, 20,
                             {"constraints": ("space",), "space_layers": [layer]}))
                todo.append(("depth_channel", layer, f"depth-channel-{layer}", seed, None,
                             {"constraints": ("channel",), "channel_layers": [layer], "lam_channel": CHANNEL_LAMBDA,
                              "relevant": every_layer}))
        for sweep, x, name, seed, per_class, cfg in (reversed(todo) if args.sweep_worker == "last" else todo):
            if "space" in cfg["constraints"]:
                cfg["lam_space"] = sp
            if "relevant" in cfg and not cfg["relevant"]:
                continue
            add(sweeps, sweep, treat(name, seed, per_class, **cfg), x=x)
        order = {(t[0], str(t[1])): i for i, t in enumerate(todo)}
        for sweep, points in sweeps.items():
            points.sort(key=lambda p, sweep=sweep: order[(sweep, str(p["x"]))])
    if args.worker is not None or args.sweep_worker:
        log(f"worker {args.worker} done ({time.time() - started:.0f}s)")
        return
    table = {name: {"test": mean_std([r["test"] for r in rs]), "val": mean_std([r["val"] for r in rs]),
                    "input_grad_bg_share": mean_std([r["input_grad_bg_share"] for r in rs]),
                    "logit_std": mean_std([r["logit_std"] for r in rs])} for name, rs in rows.items()}
    def mean_of(name: str) -> float | None:
        return table[name]["test"]["mean"] if name in table else None

    v, c, sp20 = mean_of("vanilla"), mean_of("clean_reference"), mean_of("space_20_per_class")
    recovered = (sp20 - v) / (c - v) if None not in (v, c, sp20) and c != v else None
    summary = {"vanilla": v, "clean_reference": c, "control": mean_of("control_20_per_class"),
               **{name: mean_of(name) for name in table if name not in ("vanilla", "clean_reference")},
               "gap_recovered_space_20": recovered, "lambda": lam,
               "seeds_per_row": {name: t["test"]["n"] for name, t in table.items()},
               "sweep_seeds": 0 if args.skip_sweeps else args.sweep_seeds, "seconds": time.time() - started}
    write_json(RESULTS / "shortcut.json", {"summary": summary, "table": table, "rows": rows, "sweeps": sweeps,
                                           "settings": {"model": MODEL, "base": BASE.to_dict(), "ft_epochs": FT_EPOCHS,
                                                        "ft_lr": FT_LR, "mix": MIX, "lambda_grid": LAMBDA_GRID}})
    for name, t in table.items():
        print(f"{name:28s} test {100 * t['test']['mean']:.2f} ± {100 * t['test']['std']:.2f} (n={t['test']['n']})  "
              f"bg-share {t['input_grad_bg_share']['mean']:.3f}  logit-std {t['logit_std']['mean']:.2f}")
    for sweep, points in sweeps.items():
        print(sweep, " ".join(f"{p['x']}:{100 * p['test']:.2f}" for p in points))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
