"""Helpers for the scale tests: a tiny image folder, a CLI runner, and torchrun with gloo on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node nproc -m modeldoctor ARGS`` on the CPU (gloo), standalone rendezvous."""
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "modeldoctor", *args]
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=timeout)


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m modeldoctor ARGS`` in a fresh process."""
    return subprocess.run([PYTHON, "-m", "modeldoctor", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout)


def last_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
