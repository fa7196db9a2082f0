"""Per-step cost of ``training.train_step`` (the step ``fit`` runs) against a hand-written PyTorch loop.

Both sides train their own copy of the same model on the same real mnist5k batch with the same SGD
(nesterov) + cosine schedule.  Blocks of steps alternate between the two sides (the order flips every
repetition) and the ratio of the medians of the per-block times is reported; goal ratio <= 1.10.

Example: python benchmarks/train_overhead.py --model simple-cnn --reps 15 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modeldoctor.core.files import write_json
from modeldoctor.data.bundle import make_loader, unpack_batch
from modeldoctor.data.sources import load_data
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, cross_entropy_loss, make_optimizer, make_scheduler, train_step

RESULT = Path(__file__).parent / "results" / "train_overhead.json"


def plain_step(model, opt, sched, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simple-cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=15, help="timed blocks per side")
    parser.add_argument("--steps", type=int, default=5, help="optimisation steps per block")
    args = parser.parse_args()
    torch.set_num_threads(1)

    bundle = load_data("mnist5k")
    x, y, idx = unpack_batch(next(iter(make_loader(bundle.train, args.batch_size, shuffle=True, seed=0))))
    torch.manual_seed(0)
    ours_model = build_model(args.model, bundle.num_classes, bundle.in_channels).train()
    plain_model = copy.deepcopy(ours_model)
    cfg = TrainConfig(batch_size=args.batch_size)
    total_steps = (args.reps + 1) * args.steps
    ours_opt, plain_opt = make_optimizer(ours_model, cfg), make_optimizer(plain_model, cfg)
    ours_sched, plain_sched = make_scheduler(ours_opt, cfg, total_steps), make_scheduler(plain_opt, cfg, total_steps)

    def ours_block() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(ours_model, ours_opt, ours_sched, cross_entropy_loss, x, y, idx).item()
        return time.perf_counter() - start

    def plain_block() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            plain_step(plain_model, plain_opt, plain_sched, x, y).item()
        return time.perf_counter() - start

    ours_block(), plain_block()  # warm-up: allocator, optimiser state
    ours_times, plain_times = [], []
    for rep in range(args.reps):
        if rep % 2:
            ours_times.append(ours_block())
            plain_times.append(plain_block())
        else:
            plain_times.append(plain_block())
            ours_times.append(ours_block())
    ours_ms = 1000 * statistics.median(ours_times) / args.steps
    plain_ms = 1000 * statistics.median(plain_times) / args.steps
    result = {"benchmark": "train_overhead", "model": args.model, "batch_size": args.batch_size,
              "reps": args.reps, "steps_per_rep": args.steps, "threads": torch.get_num_threads(),
              "ours_ms_per_step": round(ours_ms, 3), "plain_ms_per_step": round(plain_ms, 3),
              "ratio": round(ours_ms / plain_ms, 4), "goal": "ratio <= 1.10",
              "command": "python benchmarks/train_overhead.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    write_json(RESULT, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
