"""Scaling out on the CPU: torchrun speed-up of ``diagnose`` and the peak memory of diagnosing a large image folder.

(a) ``speedup_2proc``: the same ``modeldoctor diagnose`` (simple-cnn trained 3 epochs on a generated 2,000-image
    32 px folder, so that T = 60 confident correct samples exist in most classes, as with a real model; every conv
    layer, J = 10) once as 1 process × 1 thread and once under ``torchrun --nproc_per_node 2`` (gloo) with
    1 thread each; the ratio of the diagnosis's own ``seconds`` (scoring + correlation pass, rank 0, collectives
    included) and, separately, of the whole command's wall time (interpreter start, imports, rendezvous, writing).
    ``load_before`` is the machine's 1-minute load average before each run (other jobs share these cores).
(b) ``peak_rss_mb``: peak resident memory of ``modeldoctor diagnose`` (1 process, ``--workers 0``) with an untrained
    built-in simple-cnn-s2 over a generated 10,000-image 224 px JPEG ImageFolder (7,000 training images scored).

Usage: python benchmarks/scale.py [--images 10000] [--work-dir DIR]; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeldoctor.core.files import write_json
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint, weights_hash
from modeldoctor.models.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]


def generate(root: Path, images: int, size: int, classes: int = 10, suffix: str = ".png") -> Path:
    """``images`` smooth random images in ``classes`` folders (a class-coloured square on noise)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        c = i % classes
        path = root / f"c{c}" / f"{i:05d}{suffix}"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 90, (8, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)).copy()
        x, y = rng.integers(0, size // 2, 2)
        image[y:y + size // 3, x:x + size // 3, c % 3] = 40 + 20 * c
        Image.fromarray(image).save(path, quality=90) if suffix == ".jpg" else Image.fromarray(image).save(path)
    return root


def checkpoint(path: Path, model_spec: str, data: Path, size: int, classes: int = 10) -> Path:
    """An untrained built-in model saved as a checkpoint of ``imagefolder:data`` (speed and memory do not depend
    on training)."""
    torch.manual_seed(0)
    model = build_model(model_spec, classes, 3, size)
    meta = CheckpointMeta(model=model_spec, num_classes=classes, in_channels=3, input_size=size,
                          class_names=[f"c{c}" for c in range(classes)], mean=[0.2] * 3, std=[0.2] * 3,
                          dataset=f"imagefolder:{data}", weights_sha256=weights_hash(model))
    return save_checkpoint(path, model, meta)


def run(command: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def speedup(work: Path) -> dict:
    data = generate(work / "small", 2000, 32)
    ckpt = work / "trained" / "model.pt"
    if not ckpt.exists():
        run([sys.executable, "-m", "modeldoctor", "train", "--model", "simple-cnn", "--data", f"imagefolder:{data}",
             "--epochs", "3", "--batch-size", "64", "--device", "cpu", "--out", str(ckpt.parent), "--json"])
    args = ["diagnose", "--checkpoint", str(ckpt), "--layers", "all", "--noise-draws", "10", "--samples-per-class",
            "60", "--batch-size", "32", "--device", "cpu", "--json"]
    load_1 = os.getloadavg()[0]
    one, one_wall = run([sys.executable, "-m", "modeldoctor", *args, "--out", str(work / "d1")])
    load_2 = os.getloadavg()[0]
    two, two_wall = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         "29531", "-m", "modeldoctor", *args, "--out", str(work / "d2")])
    samples = sum(one["layers"][0]["samples"])
    return {"speedup_2proc": one["seconds"] / two["seconds"], "seconds_1proc": one["seconds"],
            "seconds_2proc": two["seconds"], "wall_seconds_1proc": one_wall, "wall_seconds_2proc": two_wall,
            "speedup_2proc_wall": one_wall / two_wall, "diagnosed_samples": samples,
            "load_before": [load_1, load_2]}


def peak_rss(work: Path, images: int) -> dict:
    data = generate(work / "large", images, 224, suffix=".jpg")
    ckpt = checkpoint(work / "large.pt", "simple-cnn-s2", data, 224)
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "modeldoctor", "diagnose", "--checkpoint",
                          str(ckpt), "--noise-draws", "2", "--samples-per-class", "10", "--batch-size", "64",
                          "--device", "cpu", "--quiet", "--json", "--out", str(work / "d-large")],
                         env=env, capture_output=True, text=True, check=True)
    return {"peak_rss_mb": int(out.stdout.strip().splitlines()[-1]) / 1024, "images": images, "image_px": 224,
            "peak_rss_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--work-dir", default=None, help="where the generated images go (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        result = {**speedup(work), **peak_rss(work, args.images), "cpus": os.cpu_count(),
                  "max_rss_this_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    write_json(Path(__file__).parent / "results" / "scale.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
