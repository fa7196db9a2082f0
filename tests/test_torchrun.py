"""torchrun with gloo on the CPU, 2 processes: ranks split the samples; the diagnosis equals one process;
data-parallel train and treat write one checkpoint each, with the accuracy a naive loop finds; a killed treatment
resumes to what an uninterrupted one writes; a failing or lost rank ends the run in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeldoctor.cli.relaunch import reason, relaunch_command
from scaling import cli, env, image_folder, last_json, naive_accuracy, rank_pids, torchrun, torchrun_command


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


def test_ranks_split_the_training_and_prediction_samples(tmp_path: Path) -> None:
    """Each rank sees a disjoint half: a run where every rank did all the work would fail here."""
    probe = Path(__file__).with_name("rank_probe.py")
    result = subprocess.run(torchrun_command([str(probe), str(tmp_path)]), env=env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for kind in ("train", "eval"):
        first, second = (sorted(s[kind]) for s in seen)
        assert len(first) == len(second) == 20 and len(set(first)) == 20, kind  # one epoch, each id once
        assert set(first).isdisjoint(second) and set(first) | set(second) == set(range(40)), kind


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
    for arm in ("treated", "control"):
        expected = naive_accuracy(out / f"{arm}.pt", "val")
        assert treated[arm]["val"]["accuracy"] == pytest.approx(expected, abs=1e-6)  # a float32 mean


def treat_args(base: Path, out: Path) -> list[str]:
    return ["treat", "--checkpoint", str(base / "base" / "model.pt"), "--boxes", str(base / "boxes.csv"),
            "--epochs", "4", "--batch-size", "16", "--out", str(out), "--device", "cpu", "--json"]


def launch_and_wait_for_first_epoch(command: list[str], out: Path) -> subprocess.Popen:
    """Start torchrun; return once the control arm's first epoch is saved (epochs take about a second here)."""
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    state = out / ".state-control.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert state.exists(), "the run ended before its first epoch was saved"
    return process


@pytest.mark.slow  # about 40 s: a killed, a resumed and an uninterrupted torchrun launch
def test_a_killed_torchrun_treatment_resumes_to_the_uninterrupted_result(base: Path) -> None:
    out, args = base / "resume", treat_args(base, base / "resume")
    process = launch_and_wait_for_first_epoch(torchrun_command(["-m", "modeldoctor", *args]), out)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, mid-run
    process.wait()
    done = torch.load(out / ".state-control.pt", weights_only=True)["epoch"]
    assert done < 3 and not (out / "treat.json").exists()
    resumed = last_json(torchrun([*args, "--resume"]))
    assert (out / "treat.json").exists()
    whole = last_json(torchrun(treat_args(base, base / "whole")))
    for arm in ("control", "treated"):
        weights_a = torch.load(out / f"{arm}.pt", weights_only=True)["state_dict"]
        weights_b = torch.load(base / "whole" / f"{arm}.pt", weights_only=True)["state_dict"]
        assert sorted(weights_a) == sorted(weights_b)
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), arm
        assert resumed[arm] == whole[arm], arm


@pytest.mark.slow  # about 20 s: one torchrun launch, one rank killed after its first epoch
def test_a_lost_rank_ends_every_survivor_in_one_line_with_the_resume_command(base: Path, tmp_path: Path) -> None:
    out, args = tmp_path / "lost", treat_args(base, tmp_path / "lost")
    logs = tmp_path / "logs"  # each rank's own stderr, apart from torchrun's report
    process = launch_and_wait_for_first_epoch(
        torchrun_command(["-m", "modeldoctor", *args], options=("--log-dir", str(logs), "--redirects", "3")), out)
    os.kill(rank_pids(process.pid)[1], signal.SIGKILL)
    _, launcher = process.communicate(timeout=120)
    assert process.returncode != 0
    (survivor,) = [p.read_text() for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    lines = survivor.strip().splitlines()
    assert "Traceback" not in survivor and sum("error" in line for line in lines) == 1, survivor
    assert lines[-1].startswith("modeldoctor treat (rank 0): error: lost rank 1 ("), lines[-1]
    resume = lines[-1].partition("resume with: ")[2]
    assert resume == " ".join(["torchrun", "--nproc_per_node", "2", "-m", "modeldoctor", *args, "--resume"])
    exit_codes = re.findall(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: (-?\d+)", launcher)
    assert exit_codes == ["1"], launcher  # its own exit code, not the launcher's SIGTERM (-15)
    assert not (out / "treat.json").exists()


def test_the_resume_line_names_the_launch_and_the_backend_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    argv = ["treat", "--checkpoint", "my model.pt", "--out", "o"]
    assert relaunch_command(argv, resumable=True) == ("torchrun --nproc_per_node 2 --nnodes 2 -m modeldoctor treat "
                                                      "--checkpoint 'my model.pt' --out o --resume")
    assert relaunch_command([*argv, "--resume"], resumable=True).count("--resume") == 1
    assert relaunch_command(["diagnose"], resumable=False).endswith("-m modeldoctor diagnose")
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:28874: "
                        "Connection reset by peer. This is typically caused by a remote process exiting\nmore")
    assert reason(gloo) == "Read error [127.0.0.1]:28874: Connection reset by peer"


def test_a_failing_rank_ends_the_run_with_one_line(base: Path) -> None:
    started = time.monotonic()
    result = torchrun(["diagnose", "--checkpoint", str(base / "base" / "model.pt"), "--layers", "nope",
                       "--device", "cpu", "--out", str(base / "bad")], timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 120
    errors = [line for line in result.stderr.splitlines() if line.startswith("modeldoctor diagnose (rank")]
    assert errors and all("nope" in line for line in errors)
