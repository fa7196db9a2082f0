"""Run under torchrun (``torchrun ... tests/rank_probe.py OUT``): which samples each rank trains on and predicts,
written to ``OUT/rank{R}.json``.  Each image carries its own id in its pixels, so the model can tell."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeldoctor.core import distributed
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.training import TrainConfig, fit, predict

SAMPLES = 40


class Recorder(nn.Module):
    """A linear classifier that notes the id in every image it is given, by mode (train: fit's steps)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 2)
        self.mean, self.std = mean, std
        self.seen: dict[str, list[int]] = {"train": [], "eval": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = ((x[:, 0, 0, 0] * self.std + self.mean) * SAMPLES).round().long().tolist()
        self.seen["train" if self.training else "eval"] += ids
        return self.fc(x.flatten(1))


def main(out: Path) -> None:
    distributed.init_from_env(torch.device("cpu"))
    images = (torch.arange(SAMPLES, dtype=torch.float32) / SAMPLES).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    every = np.arange(SAMPLES)
    bundle = bundle_from_tensors("ids", images, every % 2, [f"s{i}" for i in every], ["even", "odd"],
                                 [every, every[:4], every[:4]], None)
    model = Recorder(float(bundle.train.mean.flatten()[0]), float(bundle.train.std.flatten()[0]))
    fit(model, bundle.train, bundle.val, 2, TrainConfig(epochs=1, batch_size=8, schedule="constant"))
    model.seen["eval"] = []  # fit's validation passes
    predict(model, bundle.train, batch_size=4)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(model.seen))
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
