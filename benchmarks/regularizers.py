"""Table 2 of Kim, Samith, Utama at our scale: baseline vs Dropout 0.2 vs FocusedDropout vs input-gradient regularisation.

Protocol: resnet20 (CIFAR-style, 1 input channel, 28 px) on mnist5k (3,500 / 500 / 1,000), SGD with the
project defaults (lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4, cosine schedule, batch 128), the same
number of epochs and optimiser steps for every method; the best epoch is chosen on the validation split.
Reported per method, mean ± std over seeds: train accuracy (eval mode), test accuracy, and test accuracy
under FGSM at two ε (raw [0, 1] pixel units).

* Dropout 0.2: ``nn.Dropout(0.2)`` on the pooled features, just before the final linear layer ``fc``
  (VGG-16's classic dropout position; resnet20 has no dropout of its own).
* FocusedDropout: after ``layer3`` (the last stage, 64 × 7 × 7: the layer with the most concept
  units, as the paper's choice of conv5_3), ``par_rate`` 0.1, γ ~ U(0.6, 0.9).
* Input-gradient regularisation: double backpropagation with λ = 0.1 (each step costs ~3–4× a plain step).

Run: ``python benchmarks/regularizers.py`` (one thread, ~11 min on an idle core at 2 epochs; results are rewritten after
every run, so an interrupted benchmark leaves the finished runs in the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modeldoctor.analyses.adversarial import fgsm_accuracy
from modeldoctor.analyses.input_gradients import double_backprop_loss
from modeldoctor.core.files import write_json
from modeldoctor.data.sources import load_data
from modeldoctor.models.focused_dropout import insert_focused_dropout
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, cross_entropy_loss, evaluate, fit

RESULTS = Path(__file__).parent / "results" / "regularizers.json"


def add_dropout_before_fc(model: nn.Module) -> None:
    model.fc = nn.Sequential(nn.Dropout(0.2), model.fc)


def add_focused_dropout(model: nn.Module) -> None:
    insert_focused_dropout(model, after="layer3", par_rate=0.1)


METHODS: dict[str, tuple[Callable[[nn.Module], None] | None, Callable]] = {
    "baseline": (None, cross_entropy_loss),
    "dropout_0.2": (add_dropout_before_fc, cross_entropy_loss),
    "focused_dropout_par_0.1": (add_focused_dropout, cross_entropy_loss),
    "input_grad_reg_0.1": (None, double_backprop_loss(0.1)),
}


def one_run(method: str, seed: int, epochs: int, eps_values: list[float], bundle) -> dict:
    modify, loss_fn = METHODS[method]
    torch.manual_seed(seed)
    model = build_model("resnet20", bundle.num_classes, bundle.in_channels, bundle.input_size)
    if modify:
        modify(model)
    cfg = TrainConfig(epochs=epochs, seed=seed)
    started = time.perf_counter()
    summary = fit(model, bundle.train, bundle.val, bundle.num_classes, cfg, loss_fn=loss_fn, desc=method)
    train_seconds = time.perf_counter() - started
    return {"method": method, "seed": seed, "train_seconds": train_seconds,
            "best_epoch": summary["best_epoch"], "val_accuracy": summary["best_val_accuracy"],
            "train_accuracy": evaluate(model, bundle.train, bundle.num_classes)["accuracy"],
            "test_accuracy": evaluate(model, bundle.test, bundle.num_classes)["accuracy"],
            "fgsm_test_accuracy": fgsm_accuracy(model, bundle.test, eps_values)}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict], eps_values: list[float]) -> dict[str, dict]:
    table = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row = {key: mean_std([r[key] for r in mine]) for key in
               ("train_accuracy", "val_accuracy", "test_accuracy", "train_seconds")}
        for eps in eps_values:
            row[f"fgsm_{eps:g}"] = mean_std([r["fgsm_test_accuracy"][f"{eps:g}"] for r in mine])
        row["seeds"] = len(mine)
        table[method] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eps", default="0.05,0.1")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    eps_values = [float(e) for e in args.eps.split(",")]
    bundle = load_data("mnist5k")
    runs: list[dict] = []
    config = {"model": "resnet20", "data": "mnist5k", "epochs": args.epochs, "seeds": seeds, "eps": eps_values,
              "train_config": TrainConfig(epochs=args.epochs).to_dict(), "threads": 1,
              "dropout_position": "before fc", "focused_dropout": {"after": "layer3", "par_rate": 0.1,
                                                                    "gamma_range": [0.6, 0.9]},
              "input_grad_reg_lambda": 0.1}
    started = time.perf_counter()
    for seed in seeds:  # seed-major, so an interrupted run still holds complete comparisons
        for method in METHODS:
            runs.append(one_run(method, seed, args.epochs, eps_values, bundle))
            r = runs[-1]
            print(f"{method} seed {seed}: train {r['train_accuracy']:.4f} test {r['test_accuracy']:.4f} "
                  f"fgsm {r['fgsm_test_accuracy']} ({r['train_seconds']:.0f} s)", file=sys.stderr)
            write_json(args.out, {"config": config, "summary": summarise(runs, eps_values), "runs": runs,
                                  "total_seconds": time.perf_counter() - started})
    summary = summarise(runs, eps_values)
    print(json.dumps({"benchmark": "regularizers", "total_seconds": round(time.perf_counter() - started, 1),
                      **{m: {k: round(v["mean"], 4) for k, v in row.items() if isinstance(v, dict)
                             and k != "train_seconds"} for m, row in summary.items()}}))


if __name__ == "__main__":
    main()
