"""Channel-wise treatment (Eq. 5) vs the matched fine-tuning control on clean data, 3 seeds.

Settings: mnist5k (3,500 training images) and a harder one, the first 100 training images per class
(1,000 images).  simple-cnn-narrow is trained once per setting (seed 0), diagnosed (last conv layer), then
fine-tuned per seed twice — with and without the channel-wise constraint — with the same data order,
optimiser, epochs and seed; each picks its epoch on validation; test accuracy mean ± std over seeds.
Last stdout line: one JSON object.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.bundle import ImageSplit  # noqa: E402
from modeldoctor.data.sources import load_data  # noqa: E402
from modeldoctor.doctor.arms import split_metrics  # noqa: E402
from modeldoctor.doctor.diagnosis import diagnose  # noqa: E402
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import TrainConfig, fit  # noqa: E402

MODEL, SEEDS, FT_EPOCHS = "simple-cnn-narrow", 3, 2
BASE = TrainConfig(epochs=4, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine")


def first_per_class(split: ImageSplit, per_class: int) -> ImageSplit:
    keep = np.concatenate([np.flatnonzero(split.labels.numpy() == c)[:per_class] for c in range(10)])
    keep.sort()
    return ImageSplit(split.labels[keep], [split.ids[i] for i in keep], split.mean.flatten().tolist(),
                      split.std.flatten().tolist(), images=split.images[keep])


def mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values}


def main() -> None:
    started = time.time()
    bundle = load_data("mnist5k")
    settings = {"mnist5k": (bundle.train, 4), "mnist5k-1000": (first_per_class(bundle.train, 100), 10)}
    report = {}
    for name, (train, epochs) in settings.items():
        torch.manual_seed(0)
        model = build_model(MODEL, 10, 1, 28)
        fit(model, train, bundle.val, 10, TrainConfig(**{**BASE.to_dict(), "epochs": epochs}))
        original = split_metrics(model, bundle.val, bundle.test, 10)
        layer = "features.11"
        relevant = {layer: diagnose(model, train, layers=[layer], samples_per_class=50).relevant(layer)}
        arms: dict[str, list[float]] = {"control": [], "channel": []}
        for seed in range(SEEDS):
            cfg = TrainConfig(**{**BASE.to_dict(), "epochs": FT_EPOCHS, "lr": BASE.lr * 0.1, "seed": seed})
            for arm in arms:
                tuned = copy.deepcopy(model)
                constraints = ("channel",) if arm == "channel" else ()
                treat_cfg = TreatConfig(constraints=constraints, channel_layers=[layer], lam_channel=1.0, mix_annotated=0)
                loss_fn = TreatmentLoss(tuned, treat_cfg, (1, 28, 28), relevant)
                fit(tuned, train, bundle.val, 10, cfg, loss_fn=loss_fn, desc=f"{name} {arm} {seed}")
                arms[arm].append(split_metrics(tuned, bundle.val, bundle.test, 10)["test"]["accuracy"])
                print(f"{name} {arm} seed {seed}: test {arms[arm][-1]:.4f}", file=sys.stderr, flush=True)
        report[name] = {"original_test": original["test"]["accuracy"], "train_images": len(train),
                        **{arm: mean_std(v) for arm, v in arms.items()},
                        "difference": mean_std([t - c for t, c in zip(arms["channel"], arms["control"])])}
    summary = {name: {"original": r["original_test"], "control": r["control"]["mean"],
                      "control_std": r["control"]["std"], "channel": r["channel"]["mean"],
                      "channel_std": r["channel"]["std"], "difference": r["difference"]["mean"]}
               for name, r in report.items()}
    summary["seconds"] = time.time() - started
    write_json(Path(__file__).resolve().parent / "results" / "clean.json",
               {"summary": summary, "report": report, "settings": {"model": MODEL, "seeds": SEEDS,
                                                                    "ft_epochs": FT_EPOCHS, "base": BASE.to_dict()}})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
