"""torchrun with gloo on the CPU, 2 processes: the diagnosis equals one process; data-parallel train and treat
write one checkpoint each; a killed treatment resumes; a failing rank ends the run instead of hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaling import PYTHON, cli, env, free_port, image_folder, last_json, torchrun


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image folder, a model trained on it (one process) and a box file over its training images."""
    root = tmp_path_factory.mktemp("torchrun")
    data = image_folder(root / "data")
    last_json(cli(["train", "--model", "simple-cnn", "--data", f"imagefolder:{data}", "--epochs", "1",
                   "--batch-size", "16", "--out", str(root / "base"), "--device", "cpu", "--json"]))
    lines = ["id,x0,y0,x1,y1"] + [f"{p.relative_to(data)},2,2,12,12" for p in sorted(data.rglob("*.png"))]
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root


DIAGNOSE = ["diagnose", "--layers", "all", "--noise-draws", "3", "--samples-per-class", "8", "--batch-size", "4",
            "--lowest", "2", "--device", "cpu", "--json"]


def test_diagnose_under_torchrun_equals_one_process(base: Path) -> None:
    ckpt = ["--checkpoint", str(base / "base" / "model.pt")]
    one = last_json(cli([*DIAGNOSE, *ckpt, "--out", str(base / "d1")]))
    two = last_json(torchrun([*DIAGNOSE, *ckpt, "--out", str(base / "d2")]))
    assert one["layers"] == two["layers"]
    a, b = load_file(str(base / "d1" / "diagnosis.safetensors")), load_file(str(base / "d2" / "diagnosis.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        if key.endswith("/sums") or "/" not in key and a[key].is_floating_point() and key != "profile_confidence":
            rel = (a[key].double() - b[key].double()).abs() / a[key].double().abs().clamp_min(1e-30)
            assert rel.max() <= 1e-6, key  # ā and its sums: only the float64 reduction order differs
        else:
            assert torch.equal(a[key].nan_to_num(-1), b[key].nan_to_num(-1)), key  # counts, selected ids, profiles
    assert (base / "d1" / "annotate.json").read_text() == (base / "d2" / "annotate.json").read_text()


@pytest.mark.slow  # about 30 s: two torchrun launches
def test_data_parallel_train_and_treat_write_one_checkpoint_each(base: Path) -> None:
    data = base / "data"
    trained = last_json(torchrun(["train", "--model", "simple-cnn", "--data", f"imagefolder:{data}", "--epochs", "1",
                                  "--batch-size", "16", "--out", str(base / "ddp"), "--device", "cpu", "--json"]))
    assert sorted(p.name for p in (base / "ddp").iterdir()) == ["model.pt"] and trained["best_epoch"] == 1
    out = base / "ddp-treat"
    treated = last_json(torchrun(["treat", "--checkpoint", str(base / "ddp" / "model.pt"), "--boxes",
                                  str(base / "boxes.csv"), "--epochs", "1", "--batch-size", "16", "--out", str(out),
                                  "--device", "cpu", "--json"]))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["control.pt", "treat.json",
                                                                                  "treated.pt"]
    assert treated["treated"]["val"]["accuracy"] >= 0 and treated["control"]["val"]["accuracy"] >= 0


@pytest.mark.slow  # about 30 s: a killed and a resumed torchrun launch
def test_a_killed_torchrun_treatment_resumes(base: Path) -> None:
    out = base / "resume"
    args = ["treat", "--checkpoint", str(base / "base" / "model.pt"), "--boxes", str(base / "boxes.csv"),
            "--epochs", "8", "--batch-size", "16", "--out", str(out), "--device", "cpu", "--json"]
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "modeldoctor", *args]
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    state = out / ".state-control.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)  # epochs take about a second here: kill right after the first state file appears
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, mid-run
    process.wait()
    assert state.exists(), "the run ended before its first epoch was saved"
    done = torch.load(state, weights_only=True)["epoch"]
    assert done < 7 and not (out / "treat.json").exists()
    resumed = last_json(torchrun([*args, "--resume"]))
    assert resumed["treated"]["val"]["accuracy"] >= 0 and (out / "treated.pt").exists()
    assert torch.load(out / ".state-treated.pt", weights_only=True)["epoch"] == 7


def test_a_failing_rank_ends_the_run_with_one_line(base: Path) -> None:
    started = time.monotonic()
    result = torchrun(["diagnose", "--checkpoint", str(base / "base" / "model.pt"), "--layers", "nope",
                       "--device", "cpu", "--out", str(base / "bad")], timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 120
    errors = [line for line in result.stderr.splitlines() if line.startswith("modeldoctor diagnose (rank")]
    assert errors and all("nope" in line for line in errors)
