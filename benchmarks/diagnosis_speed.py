"""Speed of the correlation pass (Eq. 3–4) on ResNet-18 at 32 px, as ratios measured in one run.

Model: torchvision resnet18, 10 classes, random weights (speed does not depend on training).
Images: mnist5k training digits resized to 32 px and repeated to 3 channels, 50 per class (500 images),
batch 100, J = 10, δ = 0.1 × the layer's RMS.  What is timed is diagnose() over those images with the
scores of the selection pass passed in, so it is the correlation pass (forward + replays + reduction) plus
its fixed costs per call (tracing, the graph-vs-model check, the weights hash: ~0.5 s, which is why the
run uses several batches rather than one).

(a) layer4.1.conv2 alone vs one plain forward+backward (logits → all parameter gradients) over the same
    images, and J = 10 vs J = 1.
(b) the four conv layers of layer4 in one diagnose() vs the naive loop: for each layer, J full
    forward+backward passes with the same noise added at that layer only by a hook.

Repetitions are interleaved; medians are reported.  Usage: python benchmarks/diagnosis_speed.py [--reps 3]

The larger-image row: ``--arch resnet50 --size 224 --images 4 --reps 1 --naive-reps 1`` (random 224 px images, 10
classes, ``--images`` of them; the last stage = the nine conv layers of layer4; written to
results/diagnosis_speed_resnet50.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision

from modeldoctor.core.files import write_json
from modeldoctor.core.replay import NoiseReplay, draw_noise
from modeldoctor.data.sources import load_data
from modeldoctor.doctor.diagnosis import correlation_index, diagnose, sample_seeds
from modeldoctor.doctor.selection import most_confident, score_samples

J, DELTA, SEED = 10, 0.1, 0


class RandomImages(torch.utils.data.Dataset):
    """``n`` random 3-channel images (seeded), label = index mod 10."""

    def __init__(self, n: int, size: int) -> None:
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 10, i


class ThreeChannel(torch.utils.data.Dataset):
    def __init__(self, split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x, y, index = self.split[i]
        return x.expand(3, -1, -1), y, index


def plain_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)
    torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), [p for p in model.parameters()])


def naive(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, layers: list[str],
          deltas: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per layer: J full passes, each adding noise draw j at that layer only; per-sample Eq. 4 values."""
    out = {}
    for layer in layers:
        module = model.get_submodule(layer)
        grads = []
        noise = None
        for j in range(J):
            holder = {}

            def hook(mod, inputs, output, j=j, holder=holder, layer=layer):
                nonlocal noise
                if noise is None:
                    noise = draw_noise(output.detach(), J, deltas[layer], sample_seeds=sample_seeds(index, SEED, layer))
                holder["z"] = (output.detach() + noise[j]).requires_grad_(True)
                return holder["z"] * 1

            handle = module.register_forward_hook(hook)
            try:
                logits = model(x)
            finally:
                handle.remove()
            grads.append(torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), holder["z"])[0])
        out[layer] = correlation_index(torch.stack(grads))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--naive-reps", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--arch", choices=["resnet18", "resnet50"], default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=None, help="random images instead of mnist5k digits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = RandomImages(args.images, args.size) if args.images else ThreeChannel(load_data("mnist5k", args.size).train)
    model = getattr(torchvision.models, args.arch)(num_classes=10).eval()
    stage = [n for n, m in model.named_modules() if n.startswith("layer4.") and isinstance(m, torch.nn.Conv2d)
             and "downsample" not in n]
    last = stage[-1]
    scores = score_samples(NoiseReplay(model, stage), data, 256)
    chosen = most_confident(scores, args.per_class, target="label", require_correct=False)
    rows = torch.cat(list(chosen.values()))
    x = torch.stack([data[int(p)][0] for p in scores.position[rows]])
    y, index = scores.label[rows], scores.index[rows]
    batches = [slice(i, i + args.batch_size) for i in range(0, len(rows), args.batch_size)]
    kw = dict(samples_per_class=args.per_class, delta=DELTA, target="label", require_correct=False,
              batch_size=args.batch_size, scores=scores, seed=SEED)

    times: dict[str, list[float]] = {k: [] for k in ("plain", "last_j10", "last_j1", "stage", "naive")}
    stage_timings, stage_diag = [], None
    for rep in range(args.reps):
        t = time.perf_counter()
        for b in batches:
            plain_pass(model, x[b], y[b])
        times["plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        diagnose(model, data, last, noise_draws=J, **kw)
        times["last_j10"].append(time.perf_counter() - t)
        t = time.perf_counter()
        diagnose(model, data, last, noise_draws=1, **kw)
        times["last_j1"].append(time.perf_counter() - t)
        t = time.perf_counter()
        stage_diag = diagnose(model, data, stage, noise_draws=J, **kw)
        times["stage"].append(time.perf_counter() - t)
        stage_timings.append(stage_diag.timings)
        if rep < args.naive_reps:
            deltas = {n: stage_diag.layers[n].delta for n in stage}
            t = time.perf_counter()
            parts = [naive(model, x[b], y[b], index[b], stage, deltas) for b in batches]
            times["naive"].append(time.perf_counter() - t)
            reference = {n: torch.cat([p[n] for p in parts]) for n in stage}

    max_diff = 0.0
    for layer in stage:
        sums = torch.zeros(10, reference[layer].shape[1], dtype=torch.float64).index_add_(0, y, reference[layer].double())
        max_diff = max(max_diff, float((stage_diag.layers[layer].sums - sums).abs().max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    breakdown = {k: statistics.median(t[k] for t in stage_timings) for k in stage_timings[0]}
    other = "other (weights hash, setup; tracing and the graph check are inside the first forward)"
    breakdown[other] = med["stage"] - sum(breakdown.values())
    result = {
        "model": f"torchvision {args.arch}, 10 classes, random weights", "last_layer": last, "last_stage": stage,
        "images": f"{len(rows)} {'random images' if args.images else 'mnist5k train digits'}, {args.size} px, 3 channels",
        "batch_size": args.batch_size, "noise_draws": J, "delta": f"{DELTA} x layer RMS", "threads": 1,
        "replay_path": "fallback" if stage_diag.fallback_reason else "torch.fx tail replay",
        "median_seconds": med, "seconds": times,
        "last_layer_ratio_vs_plain_pass": med["last_j10"] / med["plain"],
        "last_layer_ratio_j10_vs_j1": med["last_j10"] / med["last_j1"],
        "last_stage_speedup_vs_naive": med["naive"] / med["stage"],
        "last_stage_max_abs_difference": max_diff,
        "last_stage_max_abs_sum": max(float(stage_diag.layers[n].sums.abs().max()) for n in stage),
        "last_stage_breakdown_seconds": breakdown,
    }
    name = "diagnosis_speed.json" if args.arch == "resnet18" else f"diagnosis_speed_{args.arch}.json"
    out = Path(__file__).parent / "results" / name
    write_json(out, result)
    summary = {k: result[k] for k in ("last_layer_ratio_vs_plain_pass", "last_layer_ratio_j10_vs_j1",
                                      "last_stage_speedup_vs_naive", "last_stage_max_abs_difference")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
