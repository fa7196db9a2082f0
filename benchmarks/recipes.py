"""Do the per-family training defaults train where plain SGD did not?  Each model is trained on mnist5k from
scratch twice with the same epochs and seed: with the old default for every model (SGD, lr 0.05, wd 5e-4) and with
its family's recipe (modeldoctor.training.recipe_for); validation and test accuracy, and whether the chance-level
warning fired.  Writes benchmarks/results/recipes.json; the last stdout line is one JSON object.

    python benchmarks/recipes.py [--models regnet_y_400mf,efficientnet_b0] [--epochs 3] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import modeldoctor as md
from modeldoctor.io.loading import data_for_model
from modeldoctor.training import DEFAULT_LR, recipe_for

MODELS = "regnet_y_400mf,efficientnet_b0,mobilenet_v3_small,convnext_tiny"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--arms", default="sgd_default,family_recipe", help="of sgd_default, family_recipe, adamw")
    parser.add_argument("--input-size", type=int, default=None, help="default: the data's, enlarged to the minimum")
    parser.add_argument("--out", default="recipes.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for spec in args.models.split(","):
        data = data_for_model("mnist5k", spec, args.input_size)
        arms = {"sgd_default": {"optimizer": "sgd", "lr": DEFAULT_LR["sgd"], "weight_decay": 5e-4},
                "family_recipe": recipe_for(spec),
                "adamw": {"optimizer": "adam", "lr": DEFAULT_LR["adam"], "weight_decay": 0.05}}
        for arm in args.arms.split(","):
            recipe = arms[arm]
            for seed in range(args.seeds):
                started = time.perf_counter()
                with warnings.catch_warnings(record=True):
                    warnings.simplefilter("always")
                    result = md.train(spec, data, md.TrainConfig(epochs=args.epochs, batch_size=128, seed=seed,
                                                                 **recipe))
                row = {"model": spec, "arm": arm, **recipe, "seed": seed, "input_size": data.input_size,
                       "val": result.metrics["val"]["accuracy"], "test": result.metrics["test"]["accuracy"],
                       "chance_warning": bool(result.warnings), "seconds": round(time.perf_counter() - started)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    summary = {f"{r['model']}/{r['arm']}": round(r["val"], 4) for r in rows if r["seed"] == 0}
    print(json.dumps({"epochs": args.epochs, "val_accuracy": summary,
                      "warnings": sum(r["chance_warning"] for r in rows)}))


if __name__ == "__main__":
    main()
