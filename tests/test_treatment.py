"""Treatment: the Eq. 7 loss and mixer, the treat step on the paper's classifiers, and the treat command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.doctor.annotation import MaskBank, batch_mixer
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, treat_step
from modeldoctor.io.diagnosis_files import save_diagnosis
from toys import Toy, centre_masks, toy_batch


def test_treatment_loss_and_mixer_drive_a_step():
    torch.manual_seed(0)
    model = Toy()
    x, y, idx = toy_batch()

    class Split:
        ids = [str(i) for i in range(12)]

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return x[i], int(y[i]), i

    masks = {str(i): centre_masks(1)[0] for i in range(0, 12, 3)}
    bank = MaskBank.build(Split(), masks, [0, 3, 6, 9], 8)
    assert bank.pool == [0, 3, 6, 9]
    mix = batch_mixer(Split(), bank.pool, 2, seed=1)
    mx, my, midx = mix(x[:4], y[:4], idx[:4])
    assert len(mx) == 6 and set(midx[4:].tolist()) <= {0, 3, 6, 9}
    assert torch.equal(mix(x[:4], y[:4], idx[:4])[2], midx)  # deterministic per batch
    relevant = {"conv2": torch.eye(3, 6, dtype=torch.bool)}
    cfg = TreatConfig(constraints=("space", "channel"), space_layers=["conv1", "conv2"], channel_layers=["conv2"],
                      noise_draws=2, expansion=0)
    loss_fn = TreatmentLoss(model, cfg, (1, 8, 8), relevant, bank, mix)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = treat_step(model, opt, loss_fn, x[:4], y[:4], idx[:4])
    assert np.isfinite(loss) and set(loss_fn.log) == {"space", "channel"}
    assert all(v > 0 for v in loss_fn.log.values()) and all(v > 0 for v in loss_fn.lambdas.values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    ig = TreatmentLoss(model, TreatConfig(constraints=("input-gradient",), expansion=0), (1, 8, 8), None, bank, mix)
    assert np.isfinite(treat_step(model, opt, ig, x[:4], y[:4], idx[:4])) and ig.log["input-gradient"] > 0
    with pytest.raises(UserError, match="masks"):
        TreatmentLoss(model, TreatConfig(constraints=("space",)), (1, 8, 8), None, None)
    with pytest.raises(UserError, match="relevant kernels"):
        TreatmentLoss(model, TreatConfig(constraints=("channel",)), (1, 8, 8), {}, None)
    with pytest.raises(UserError, match="bound to the model"):
        loss_fn(Toy(), x[:4], y[:4], idx[:4])


PAPER_CLASSIFIERS = ["alexnet", "vgg16", "resnet34", "resnet50", "wide_resnet50_2", "resnext50_32x4d", "densenet121",
                     "simple-cnn", "efficientnet_v2_s", "googlenet", "timm:xception41", "mobilenet_v2",
                     "inception_v3", "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0"]


@pytest.mark.slow
def test_treat_step_on_the_16_paper_classifiers():
    from modeldoctor.core.layers import conv_layer_names
    from modeldoctor.models.zoo import build_model, min_input_size

    failures = []
    for name in PAPER_CLASSIFIERS:
        torch.manual_seed(0)
        size = max(min_input_size(name), 32)
        model = build_model(name, 3, 3, size)
        last = conv_layer_names(model)[-2:]
        out_channels = model.get_submodule(last[-1]).out_channels
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
        bank = MaskBank(masks, torch.ones(2, dtype=torch.bool), [0, 1])
        relevant = {last[-1]: torch.rand(3, out_channels, generator=torch.Generator().manual_seed(0)) > 0.5}
        cfg = TreatConfig(constraints=("space", "channel"), space_layers=last, channel_layers=last[-1:],
                          noise_draws=2, expansion=2, lam_space=1.0, lam_channel=1.0)
        loss_fn = TreatmentLoss(model, cfg, (3, size, size), relevant, bank)
        log = loss_fn.log
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
        try:
            loss = treat_step(model, opt, loss_fn, x, y, torch.arange(2))
            assert np.isfinite(loss) and "channel" in log and "space" in log, log
        except Exception as exc:  # collect, so one run names every failing architecture
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        del model, opt
    assert not failures, failures


def _tiny_imagefolder(root) -> None:
    """3 classes of 24-px squares at class-specific places, with object masks next to them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "data" / f"c{c}").mkdir(parents=True)
        (root / "masks" / f"c{c}").mkdir(parents=True)
        for i in range(40):
            img = rng.uniform(0, 0.4, (24, 24))
            r, col = 2 + 6 * c + rng.integers(0, 3), 4 + rng.integers(0, 10)
            img[r:r + 6, col:col + 6] = 1.0
            Image.fromarray((img * 255).astype(np.uint8)).save(root / "data" / f"c{c}" / f"{i}.png")
            mask = np.zeros((24, 24), dtype=np.uint8)
            mask[r:r + 6, col:col + 6] = 255
            Image.fromarray(mask).save(root / "masks" / f"c{c}" / f"{i}.png")  # named after the sample id c0/3.png


@pytest.mark.slow
def test_treat_cli_resume_after_kill_matches_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from modeldoctor.cli.app import main
    from modeldoctor.data.sources import load_data
    from modeldoctor.doctor.diagnosis import diagnose
    from modeldoctor.models.checkpoint import load_checkpoint

    _tiny_imagefolder(tmp_path)
    data = f"imagefolder:{tmp_path / 'data'}"
    assert main(["train", "--model", "simple-cnn-narrow", "--data", data, "--epochs", "2", "--out",
                 str(tmp_path / "base"), "--json"]) == 0
    model, _ = load_checkpoint(tmp_path / "base" / "model.pt")
    save_diagnosis(diagnose(model, load_data(data).train, samples_per_class=10), tmp_path / "diag")
    masks = tmp_path / "masks"
    args = ["treat", "--checkpoint", str(tmp_path / "base" / "model.pt"), "--diagnosis", str(tmp_path / "diag"),
            "--data", data, "--constraints", "space,channel", "--masks", str(masks), "--annotate-per-class", "5",
            "--epochs", "6", "--json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "treat.json").read_text())
    assert first["annotated"] == 12 and first["held_out"] == 3  # a quarter of each class measures swap accuracy
    assert set(first) >= {"checkpoint", "original", "control", "treated", "lambdas", "weight_change", "select"}
    assert 0 <= first["treated"]["test"]["accuracy"] <= 1 and len(first["treated"]["val"]["per_class"]) == 3
    treated, meta = load_checkpoint(tmp_path / "a" / "treated.pt")
    assert meta.parent and meta.parent.endswith("model.pt")

    out_b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "modeldoctor", *args, "--out", str(out_b)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out_b / ".state-treated.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out_b / "treat.json").exists()
    assert main([*args, "--out", str(out_b), "--resume"]) == 0
    second = json.loads((out_b / "treat.json").read_text())
    for arm in ("original", "control", "treated"):
        assert second[arm] == first[arm], arm


def test_mean_std_over_seeds():
    from modeldoctor.doctor.arms import mean_std

    runs = [{s: {"accuracy": a, "per_class": [a, 1 - a]} for s in ("val", "test")} for a in (0.5, 0.7)]
    out = mean_std(runs)
    assert out["seeds"] == 2 and out["test"]["accuracy"] == pytest.approx(0.6)
    assert out["std"]["val"]["accuracy"] == pytest.approx(0.1414, abs=1e-3)
    assert out["val"]["per_class"] == pytest.approx([0.6, 0.4])


@pytest.mark.parametrize(("given", "expected"), [([], TreatConfig.early_stop_margin), (["0.2"], 0.2), (["off"], None)])
def test_treat_cli_early_stop_margin_reaches_the_treat_config(given, expected):
    from modeldoctor.cli.app import build_parser
    from modeldoctor.cli.commands.treat import _options

    flag = ["--early-stop-margin", *given] if given else []
    args = build_parser().parse_args(["treat", "--checkpoint", "m.pt", "--out", "o", *flag])
    options = _options(args)
    assert TreatConfig(**options).early_stop_margin == expected
