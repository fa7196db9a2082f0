"""Speed of batched unit deletion vs one full evaluation per unit, as a ratio measured in one run.

Model: simple-cnn trained for two epochs on mnist5k (seed 0, project defaults; its weights do not change the
cost, but a trained model makes the per-unit accuracies worth comparing).  Layer: its last conv
(features.11, 128 units).  Data: the mnist5k validation split (500 images), batch 128, one thread.

Batched: modeldoctor.analyses.ablation.unit_deletion (one forward pass per batch, then the tail after the layer
replayed for the ablated copies).  Reference: unit_deletion_one_at_a_time (128 full evaluations under a
zeroing hook).  Order: batched, reference, batched; the speedup uses the mean of the two batched runs, so
load drift on a shared machine affects both sides alike.  Per-unit accuracies must be identical.

Usage: python benchmarks/ablation_speed.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modeldoctor.analyses.ablation import unit_deletion, unit_deletion_one_at_a_time
from modeldoctor.core.files import write_json
from modeldoctor.core.layers import default_layer
from modeldoctor.data.sources import load_data
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, evaluate, fit

RESULTS = Path(__file__).parent / "results" / "ablation_speed.json"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_data("mnist5k")
    torch.manual_seed(0)
    model = build_model("simple-cnn", bundle.num_classes, bundle.in_channels)
    _, train_s = timed(fit, model, bundle.train, bundle.val, bundle.num_classes, TrainConfig(epochs=args.epochs, seed=0))
    layer = default_layer(model, bundle.input_shape)
    val = bundle.val
    first, batched_1 = timed(unit_deletion, model, val, bundle.num_classes, layer, batch_size=128)
    reference, single_s = timed(unit_deletion_one_at_a_time, model, val, bundle.num_classes, layer, batch_size=128)
    second, batched_2 = timed(unit_deletion, model, val, bundle.num_classes, layer, batch_size=128)
    batched_s = (batched_1 + batched_2) / 2
    identical = bool(torch.equal(first.per_class, reference.per_class) and torch.equal(second.per_class, first.per_class))
    result = {
        "model": "simple-cnn", "layer": layer, "units": len(first.units), "split": "val", "samples": len(val),
        "epochs": args.epochs, "val_accuracy": evaluate(model, val, bundle.num_classes)["accuracy"],
        "train_seconds": train_s, "batched_seconds": [batched_1, batched_2], "one_per_unit_seconds": single_s,
        "speedup": single_s / batched_s, "per_unit_accuracy_identical": identical,
        "max_abs_loss_difference": float((first.loss - reference.loss).abs().max()),
        "threads": torch.get_num_threads(),
    }
    write_json(RESULTS, result)
    print(json.dumps({"speedup": round(result["speedup"], 2), "batched_seconds": round(batched_s, 3),
                      "one_per_unit_seconds": round(single_s, 2), "units": result["units"],
                      "per_unit_accuracy_identical": identical}))


if __name__ == "__main__":
    main()
