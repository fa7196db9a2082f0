"""The HTML report: built from real command outputs of a toy run, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from browser import chromium
from modeldoctor import cli
from modeldoctor.analyses.gradcam import grad_cam
from modeldoctor.api import annotation_list
from modeldoctor.core.files import write_json
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.data.sources import register_dataset
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.io.diagnosis_files import save_diagnosis
from modeldoctor.report import report
from modeldoctor.report.figures import kernel_order

SECTIONS = ["discovery", "attention", "annotate", "treatment", "reliance", "before-after", "stability", "decomposition",
            "ablation"]


def toy_bundle(arg: str, input_size: int | None):
    """3 classes, 20 px: a bright square whose position is the class, over noise; masks = the square."""
    g = torch.Generator().manual_seed(0)
    n, size = 180, 20
    labels = np.arange(n) % 3
    images = 0.3 * torch.rand(n, 1, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i, c in enumerate(labels):
        r = 2 + 5 * int(c) + int(torch.randint(0, 2, (1,), generator=g))
        masks[i, r:r + 6, 7:13] = True
    images[:, 0][masks] = 1.0
    parts = [np.arange(0, 120), np.arange(120, 150), np.arange(150, 180)]
    ids = [f"toy-{i:03d}" for i in range(n)]
    return bundle_from_tensors("report-toy", images, labels, ids, ["top", "middle", "bottom"], parts, input_size,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})


register_dataset("report-toy", toy_bundle)


def _cli(*argv: str) -> None:
    assert cli.main([*argv, "--json"]) == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Outputs of train, diagnose (+ annotate.json), treat, stability, decompose and ablate on the toy data."""
    run = tmp_path_factory.mktemp("run")
    _cli("train", "--model", "simple-cnn-narrow", "--data", "report-toy", "--epochs", "3", "--batch-size", "16",
         "--optimizer", "adam", "--lr", "0.01",
         "--out", str(run / "base"))
    ckpt = str(run / "base" / "model.pt")
    from modeldoctor.data.sources import load_data
    from modeldoctor.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(ckpt)
    bundle = load_data("report-toy")
    diagnosis = diagnose(model, bundle.train, layers="all", samples_per_class=8, noise_draws=2,
                         class_names=bundle.class_names, model_spec=meta.model)
    save_diagnosis(diagnosis, run / "diag")
    write_json(run / "diag" / "annotate.json", annotation_list(model, bundle, per_class=10))
    _cli("treat", "--checkpoint", ckpt, "--diagnosis", str(run / "diag"), "--masks", "builtin",
         "--annotate-per-class", "5", "--epochs", "1", "--seeds", "2", "--noise-draws", "2", "--out", str(run / "treat"))
    _cli("stability", "--checkpoint", ckpt, "--eps", "0.3", "--deltas", "0,0.5,1", "--draws", "2",
         "--max-samples", "30", "--out", str(run / "stability"))
    _cli("decompose", "--checkpoint", ckpt, "--k", "3", "--retrain-epochs", "1", "--out", str(run / "decompose"))
    _cli("ablate", "--checkpoint", ckpt, "--k", "2", "--out", str(run / "ablate"))
    return run


@pytest.mark.slow
def test_report_renders_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    html_path = report(run_dir, tmp_path / "report.html")
    page = html_path.read_text()
    for key in SECTIONS:
        assert f"<section id='{key}'>" in page, key
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page), "external URL in the report"
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert len(pngs) == page.count("<img"), pngs
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("status") == "loaded", attrs
    assert int(attrs["images-total"]) == len(pngs) > 0
    assert attrs["images-loaded"] == attrs["images-total"], attrs
    assert attrs["errors"] == "0", attrs
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_report_shows_only_sections_with_data(run_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(run_dir / "decompose", partial / "decompose")
    page = report(partial, images=False).read_text()
    assert "<section id='decomposition'>" in page
    assert all(f"<section id='{k}'>" not in page for k in SECTIONS if k != "decomposition")


@pytest.mark.slow
def test_report_json_from_the_cli(run_dir: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(run_dir / "stability", tmp_path / "s")
    assert cli.main(["report", str(tmp_path / "s"), "--no-images", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["html"]).is_file() and [Path(f).name for f in out["figures"]] == ["stability.png"]


def test_kernel_order_makes_a_staircase() -> None:
    abar = np.array([[0.0, 5.0, 0.0, 1.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 2.0]])
    order = kernel_order(abar)
    assert order.tolist() == [1, 0, 2, 3]  # by the class each kernel serves most (rows min-max scaled), then strength


def test_grad_cam_of_gap_linear_tail_is_the_cam() -> None:
    """With global average pooling and one linear layer, Grad-CAM = ReLU(Σ_k w_ck A^k) / (H·W)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    fc = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), fc)
    x = torch.randn(2, 1, 6, 6)
    target = torch.tensor([0, 2])
    cam = grad_cam(model, x, "0", target, upsample=False)
    a = conv(x).detach()
    expected = torch.relu(torch.einsum("nk,nkhw->nhw", fc.weight[target].detach(), a)) / 36
    torch.testing.assert_close(cam, expected)
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_default_layer_is_the_pooling_input() -> None:
    """With no layer, Grad-CAM uses the maps entering global pooling: for GAP + linear, ReLU(Σ_k w_ck A^k)/Z."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    model = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(2, 1, 6, 6)
    target = torch.tensor([0, 2])
    cam = grad_cam(model, x, None, target, upsample=False)
    feats = body(x).detach()
    weights = model[3].weight.detach()[target]
    expected = torch.relu((weights[:, :, None, None] * feats).sum(1)) / 36
    torch.testing.assert_close(cam, expected)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_report_cli_lists_written_figures_and_quiet_silences_info(tmp_path: Path, capsys) -> None:
    (tmp_path / "annotate.json").write_text(json.dumps(  # an output without figures (no images to show)
        {"per_class": {"0": [{"id": "a", "confidence": 0.2, "label": 0, "predicted": 1}]}}))
    assert cli.main(["report", str(tmp_path), "--no-images", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"html": str(tmp_path / "report.html"), "figures": []}
    assert captured.err.startswith("modeldoctor report: 1 sections, 0 figures")
    assert cli.main(["report", str(tmp_path), "--no-images", "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_the_candidate_table_shows_each_fine_tune_per_epoch() -> None:
    """A hand-made treat.json: the stopped fine-tune's one epoch, the full run's three, the head re-fit none."""
    from modeldoctor.report.build import treatment_section

    split = {"accuracy": 0.5, "per_class": [0.5, 0.5]}
    arm = {"test": split, "swap": split}
    candidates = [
        {"name": "counterfactual", "select_swap": 0.33, "seconds": 9.0, "lr": 0.05, "stopped_after": 1,
         "select_swap_per_epoch": [0.33]},
        {"name": "last-layer", "select_swap": 0.7, "seconds": 1.0, "head_of": "control"},
        {"name": "counterfactual-low-lr", "select_swap": 0.854, "seconds": 27.0, "lr": 0.01,
         "select_swap_per_epoch": [0.729, 0.8125, 0.854]}]
    section = treatment_section({"original": arm, "control": arm, "treated": arm, "candidates": candidates,
                                 "verdict": {"candidate": "counterfactual-low-lr"}, "select": "swap"}, ["a", "b"])
    page = "".join(section.tables)
    assert "stopped after 1: trailing the re-fit head (33.0)" in page
    assert "full run (72.9 → 81.2 → 85.4)" in page
    assert "<td>full run</td>" in page
