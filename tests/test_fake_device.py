"""Device-following on a CPU-only machine: the commands that re-run the model (explain, ablate, decompose, stability,
dissect, report) run with the model on a pretend second device (``fake_device.FakeDevice``); any tensor built on the
CPU and mixed with the model's, or read with ``.numpy()`` on the model's device, fails the test as CUDA would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_device import FakeDevice
from modeldoctor.cli.app import main
from modeldoctor.io import loading
from test_device import workspace  # noqa: F401  (the shared fixture: a trained model, masks, boxes)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


COMMANDS = {
    "explain": ["--diagnosis", "{diag}", "--sample", "c0/000.png", "--out", "{out}"],
    "ablate": ["--max-samples", "12", "--out", "{out}"],
    "decompose": ["--retrain-epochs", "0", "--noise-repeats", "1", "--out", "{out}"],
    "stability": ["--eps", "0.9", "--max-samples", "18", "--draws", "2", "--out", "{out}"],
    "dissect": ["--masks", "{masks}", "--out", "{out}"],
}


@pytest.fixture(scope="module")
def diagnosis(workspace: Path) -> Path:  # noqa: F811
    out = workspace / "fake-diag"
    assert main(["diagnose", "--checkpoint", str(workspace / "base" / "model.pt"), "--noise-draws", "2",
                 "--samples-per-class", "4", "--out", str(out), "--device", "cpu", "--json"]) == 0
    return out


# decompose runs without retraining: a deep-copied model's buffers lose FakeDevice's tag, so `fit` on the copy would
# fail here for a reason CUDA does not have (so fit, train and treat are not checked on the pretend device).
@pytest.mark.parametrize("command", list(COMMANDS))
def test_analyses_follow_the_model_device(command: str, workspace: Path, diagnosis: Path,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"diag": str(diagnosis), "out": str(workspace / f"fake-{command}"), "masks": str(workspace / "masks")}
    argv = [command, "--checkpoint", str(workspace / "base" / "model.pt"),
            *(a.format(**values) for a in COMMANDS[command])]
    with FakeDevice() as fake:
        monkeypatch.setattr(loading, "place", fake.place)
        _run(capsys, argv)
