"""Helpers for the scale tests: a tiny image folder, a CLI runner, and torchrun with gloo on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def image_folder(root: Path, classes: int = 3, per_class: int = 30, size: int = 16, seed: int = 0) -> Path:
    """``classes`` folders of ``per_class`` RGB PNGs: a class-coloured square on noise (a learnable toy)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            image[y:y + size // 2, x:x + size // 2, c % 3] = 230
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def env(threads: int = 1) -> dict[str, str]:
    """One thread per process (2 processes on a 2-core machine), the repository's src on the path."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "MODELDOCTOR_DIST_TIMEOUT": "120"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(target: list[str], nproc: int = 2, options: tuple[str, ...] = ()) -> list[str]:
    """``torchrun --nproc_per_node nproc OPTIONS TARGET`` (TARGET: ``-m modeldoctor ARGS`` or ``script.py ARGS``)."""
    return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *options, *target]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node nproc -m modeldoctor ARGS`` on the CPU (gloo), standalone rendezvous."""
    return subprocess.run(torchrun_command(["-m", "modeldoctor", *args], nproc), env=env(), capture_output=True,
                          text=True, timeout=timeout)


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun process started (read from their environment)."""
    pids = {}
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        variables = dict(v.split("=", 1) for v in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in v)
        pids[int(variables["RANK"])] = int(child)
    return pids


def naive_accuracy(checkpoint: Path, split: str) -> float:
    """The checkpoint's accuracy on a split of its data, one image at a time, normalised here by hand."""
    from modeldoctor.data.sources import load_data
    from modeldoctor.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    part = load_data(meta.dataset, input_size=meta.input_size).split(split)
    mean, std = torch.tensor(meta.mean).view(-1, 1, 1), torch.tensor(meta.std).view(-1, 1, 1)
    model.eval()
    with torch.no_grad():
        right = sum(int(model(((part.raw(i) - mean) / std)[None]).argmax()) == int(part.labels[i])
                    for i in range(len(part)))
    return right / len(part)


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m modeldoctor ARGS`` in a fresh process."""
    return subprocess.run([PYTHON, "-m", "modeldoctor", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout)


def last_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
