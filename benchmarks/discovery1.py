"""Discovery 1 on mnist5k: how many kernels hold 90% of each class's correlation mass, layer by layer.

Trains a model on mnist5k (best epoch on the validation split), diagnoses every conv layer with the
defaults (T = 100 most confident correct training samples per class, J = 10, δ = 0.1 × layer RMS,
ŷ = predicted logit, |·|) and reports, per layer: kernels for 90% mass (mean over classes, and as a
fraction of the layer's channels), Gini, mean pairwise Jaccard of the relevant sets (min-max θ = 0.2),
the cosine between single confident samples and their class profile, and the trend with depth.

Usage: python benchmarks/discovery1.py [--model simple-cnn] [--epochs 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modeldoctor.core.files import write_json
from modeldoctor.data.sources import load_data
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.doctor.discovery import discovery_statistics
from modeldoctor.io.diagnosis_files import finite
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="simple-cnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "discovery1.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    bundle = load_data("mnist5k")
    model = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.input_size)
    started = time.perf_counter()
    fit(model, bundle.train, bundle.val, bundle.num_classes, TrainConfig(epochs=args.epochs, seed=args.seed))
    train_seconds = time.perf_counter() - started
    val = evaluate(model, bundle.val, bundle.num_classes)["accuracy"]
    started = time.perf_counter()
    diagnosis = diagnose(model, bundle.train, "all", class_names=bundle.class_names, model_spec=args.model)
    diagnose_seconds = time.perf_counter() - started
    stats = discovery_statistics(diagnosis)
    table = [{"layer": s["name"], "depth": s["depth"], "channels": s["channels"],
              "mean_kernels_for_90pct_mass": round(s["mean_kernels_for_90pct_mass"], 2),
              "fraction_of_channels": round(s["fraction_kernels_for_90pct_mass"], 3),
              "min_max_kernels_for_90pct": [min(s["kernels_for_90pct_mass"]), max(s["kernels_for_90pct_mass"])],
              "mean_gini": round(sum(s["gini"]) / len(s["gini"]), 3),
              "relevant_per_class_mean": round(sum(s["relevant_per_class"]) / len(s["relevant_per_class"]), 1),
              "mean_pairwise_jaccard": round(s["mean_pairwise_jaccard"], 3),
              "mean_sample_vs_class_cosine": round(s["mean_sample_vs_class_cosine"], 3),
              "mean_sample_vs_other_classes_cosine": round(s["mean_sample_vs_other_classes_cosine"], 3)}
             for s in sorted(stats["layers"], key=lambda s: s["depth"])]
    result = {"model": args.model, "data": "mnist5k", "epochs": args.epochs, "seed": args.seed,
              "val_accuracy": val, "train_seconds": train_seconds, "diagnose_seconds": diagnose_seconds,
              "options": {"samples_per_class": 100, "noise_draws": 10, "delta": "0.1 x layer RMS",
                          "output": "logit", "reduce": "abs", "relevance": "minmax theta=0.2"},
              "samples_per_class": diagnosis.layers[next(iter(diagnosis.layers))].counts.tolist(),
              "table": table,
              "trend_kernels_for_90pct": stats["trend_kernels_for_90pct"],
              "trend_fraction_for_90pct": stats["trend_fraction_for_90pct"],
              "statistics": stats}
    write_json(args.out, finite(result))
    first, last = table[0], table[-1]
    print(json.dumps({"model": args.model, "val_accuracy": round(val, 4),
                      "kernels_for_90pct_first_to_last": [t["mean_kernels_for_90pct_mass"] for t in table],
                      "fraction_first_to_last": [t["fraction_of_channels"] for t in table],
                      "spearman_fraction_vs_depth": stats["trend_fraction_for_90pct"]["spearman"],
                      "first_layer": first["layer"], "last_layer": last["layer"]}))


if __name__ == "__main__":
    main()
