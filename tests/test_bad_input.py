"""The bad-input table: each bad command line exits 2 with one stderr line naming the problem, before any work,
and leaves nothing behind (no output folder, no file)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modeldoctor import cli

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
    (["layers", "--model", "vit_b_16"], "vit_b_16 is a transformer"),
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


def test_the_table_covers_every_command_that_computes() -> None:
    covered = {argv[0] for argv, _ in BAD_INPUTS}
    assert covered >= {"train", "diagnose", "treat", "dissect", "stability", "decompose", "ablate", "explain",
                       "import", "annotate", "layers"}
