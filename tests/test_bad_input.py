"""The bad-input table: each bad command line exits 2 with one stderr line naming the problem, before any work,
and leaves nothing behind (no output folder, no file)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from modeldoctor import cli
from modeldoctor.cli.app import build_parser, command_names
from modeldoctor.cli.checks import RANGES

CKPT = ["--checkpoint", "missing.pt"]  # never read: every row fails on its arguments first

# argv (relative paths resolve inside an empty working folder), the message's telling part.
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["train", "--model", "simple-cnn", "--epochs", "-1", "--out", "o"], "--epochs must be ≥ 1, got -1"),
    (["train", "--model", "simple-cnn", "--epochs", "0", "--out", "o"], "--epochs must be ≥ 1, got 0"),
    (["train", "--model", "simple-cnn", "--lr", "0", "--out", "o"], "--lr must be > 0, got 0"),
    (["train", "--model", "simple-cnn", "--lr", "nan", "--out", "o"], "--lr must be > 0, got nan"),
    (["train", "--model", "simple-cnn", "--batch-size", "0", "--out", "o"], "--batch-size must be ≥ 1"),
    (["train", "--model", "simple-cnn", "--weight-decay", "-1", "--out", "o"], "--weight-decay must be ≥ 0"),
    (["train", "--model", "simple-cnn", "--input-size", "0", "--out", "o"], "--input-size must be ≥ 1"),
    (["train", "--model", "simple-cnn", "--workers", "-2", "--out", "o"], "--workers must be ≥ 0"),
    (["train", "--model", "simple-cnn", "--epochs", "three", "--out", "o"], "invalid int value: 'three'"),
    (["train", "--model", "simple-cnn", "--out", "o", "--colour"], "unrecognized arguments: --colour"),
    (["train", "--model", "simple-cnn"], "the following arguments are required: --out"),
    (["train", "--model", "simple-cnn", "--out", "a_file"], "--out a_file exists and is not a directory"),
    (["train", "--model", "simple-cnn", "--out", "a_file/sub"], "lies under the file a_file"),
    (["train", "--model", "convnext_tiny", "--input-size", "16", "--out", "o"], "needs inputs of at least 32 px"),
    (["layers", "--model", "vit_b_16", "--input-size", "16"], "vit_b_16 needs inputs of at least 224 px"),
    (["diagnose", *CKPT, "--noise-draws", "0"], "--noise-draws must be ≥ 1"),
    (["diagnose", *CKPT, "--samples-per-class", "0"], "--samples-per-class must be ≥ 1"),
    (["diagnose", *CKPT, "--delta", "-0.1"], "--delta must be ≥ 0"),
    (["diagnose", *CKPT, "--min-confidence", "1.5"], "--min-confidence must be in [0, 1]"),
    (["diagnose", *CKPT, "--lowest", "-3"], "--lowest must be ≥ 0"),
    (["diagnose", *CKPT, "--out", "a_file"], "--out a_file exists and is not a directory"),
    (["treat", *CKPT, "--out", "o", "--epochs", "0"], "--epochs must be ≥ 1"),
    (["treat", *CKPT, "--out", "o", "--lam", "-1"], "expected auto or a number >= 0"),
    (["treat", *CKPT, "--out", "o", "--lam-fraction", "0"], "--lam-fraction must be > 0"),
    (["treat", *CKPT, "--out", "o", "--holdout-annotated", "1"], "--holdout-annotated must be in [0, 1)"),
    (["treat", *CKPT, "--out", "o", "--seeds", "0"], "--seeds must be ≥ 1"),
    (["treat", *CKPT, "--out", "o", "--smooth-beta", "-2"], "--smooth-beta must be > 0"),
    (["treat", *CKPT, "--out", "o", "--term-cap", "0"], "--term-cap must be > 0"),
    (["treat", *CKPT, "--out", "o", "--composites", "-1"], "--composites must be ≥ 0"),
    (["treat", *CKPT, "--out", "o", "--early-stop-margin", "-1"], "expected off or a number >= 0"),
    (["dissect", *CKPT, "--quantile", "1"], "--quantile must be in (0, 1)"),
    (["stability", *CKPT, "--eps", "0"], "--eps must be > 0"),
    (["stability", *CKPT, "--draws", "0"], "--draws must be ≥ 1"),
    (["decompose", *CKPT, "--k", "0"], "k must be a positive integer or a fraction in (0, 1)"),
    (["decompose", *CKPT, "--retrain-epochs", "-1"], "--retrain-epochs must be ≥ 0"),
    (["ablate", *CKPT, "--top", "0"], "--top must be ≥ 1"),
    (["explain", *CKPT, "--diagnosis", "d", "--sample", "s", "--out", "a_file"], "exists and is not a directory"),
    (["import", "--model", "resnet18", "--weights", "w.pth", "--data", "mnist5k", "--mean", "a,b", "--out", "m.pt"],
     "--mean takes numbers"),
    (["import", "--model", "resnet18", "--weights", "w.pth", "--data", "mnist5k", "--out", "m.pt"],
     "weights file w.pth does not exist"),
    (["annotate", "--ids", "x"], "with --ids, pass --out DIR"),
    (["diagnose", "--checkpoint", "missing.pt"], "checkpoint missing.pt does not exist"),
    (["decompose", *CKPT, "--min-r-a", "0"], "--min-r-a must be > 0"),
    (["annotate", "--ids", "x", "--out", "o", "--port", "70000"], "--port must be in [0, 65535]"),
    (["evaluate", *CKPT, "--fgsm", "2"], "needs ε values in [0, 1]"),
    (["evaluate", "--checkpoint", "missing.pt"], "checkpoint missing.pt does not exist"),
    (["report", "."], "holds no Model Doctor output"),
    (["report", "missing"], "missing is not a directory"),
    (["report", ".", "--max-images", "0"], "--max-images must be ≥ 1"),
    (["demo", "--seed", "-1"], "--seed must be ≥ 0"),
    (["demo", "--out", "a_file"], "--out a_file exists and is not a directory"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(argv: list[str], message: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("the user's file")
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(cli.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert message in err[0] and err[0].startswith("modeldoctor"), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failed command left something behind"
    assert (tmp_path / "a_file").read_text() == "the user's file"
    assert time.perf_counter() - started < 60, "the refusal came after minutes of work"


def test_the_table_covers_every_command() -> None:
    assert {argv[0] for argv, _ in BAD_INPUTS} == set(command_names())


def unruled_numeric_options(parser: argparse.ArgumentParser) -> list[str]:
    """``COMMAND --option`` for every int / float option without a RANGES rule (options parsed by a function of
    their own, such as --lam, check their values there)."""
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [f"{name} --{action.dest.replace('_', '-')}" for name, sub in subcommands.choices.items()
            for action in sub._actions if action.type in (int, float) and action.dest not in RANGES]


def test_every_numeric_option_has_a_range_rule() -> None:
    parser = build_parser()
    assert unruled_numeric_options(parser) == [], "add a rule to RANGES in modeldoctor/cli/checks.py"
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subcommands.choices["train"].add_argument("--new-knob", type=float)
    assert unruled_numeric_options(parser) == ["train --new-knob"]



UNWRITABLE = ["train", "--model", "simple-cnn", "--out", "locked/sub"]


def test_an_unwritable_out_is_refused_before_any_work() -> None:
    """A real read-only folder: as root (who may write anywhere) the command runs as nobody."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.chmod(root, 0o755)  # nobody may enter the folder, not write in it
        (root / "locked").mkdir(mode=0o555)
        (root / "home").mkdir(mode=0o777)  # matplotlib's and the probe's caches
        os.chmod(root / "home", 0o777)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[2]), "HOME": str(root / "home"),
               "MPLCONFIGDIR": str(root / "home"), "XDG_CACHE_HOME": str(root / "home")}
        result = subprocess.run([*as_user, sys.executable, "-m", "modeldoctor", *UNWRITABLE], cwd=root, env=env,
                                capture_output=True, text=True, timeout=120)
        err = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(err) == 1, result.stderr
        assert "locked is not writable" in err[0]
        assert list((root / "locked").iterdir()) == []
