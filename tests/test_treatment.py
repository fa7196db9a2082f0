"""Treatment: Eq. 5–6 constraints, masks, the treat step, and the treat command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.masks import background_mask, check_masks, default_expansion, expand_mask, load_boxes, load_masks
from modeldoctor.doctor.annotation import MaskBank, batch_mixer
from modeldoctor.doctor.constraints import (
    below_threshold,
    channel_constraint,
    competitor_classes,
    first_classes,
    spatial_constraint,
)
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, treat_step
from modeldoctor.io.diagnosis_files import save_diagnosis


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(h.mean((2, 3)))


def toy_batch(n: int = 12, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=g), torch.arange(n) % 3, torch.arange(n)


def centre_masks(n: int, size: int = 8) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, 3:5, 3:5] = True
    return m


def constraint_value(replay: NoiseReplay, x: torch.Tensor, y: torch.Tensor, which: str) -> torch.Tensor:
    state = replay.forward(x)
    first = first_classes(state.logits, y, "label")
    second, weight = competitor_classes(state.logits, y, first, "runner_up")
    g = replay.gradients(state, "conv1", [first, second], noise_draws=3, delta=0.1, create_graph=True)
    if which == "channel":
        abar = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]])
        return channel_constraint(g.grads[0], g.grads[1], below_threshold(abar[first], 0.5), weight)
    bg = background_mask(centre_masks(len(x)), (8, 8), expansion=0)
    return spatial_constraint(g.grads[0], bg)


@pytest.mark.parametrize("which", ["channel", "space"])
def test_constraint_has_parameter_gradients_and_falls(which):
    torch.manual_seed(0)
    model = Toy().train()
    x, y, _ = toy_batch()
    replay = NoiseReplay(model, ["conv1"])
    value = constraint_value(replay, x, y, which)
    tail = [model.bn.weight, model.conv2.weight, model.fc.weight]
    grads = torch.autograd.grad(value, [model.conv1.weight, *tail])
    assert all(g.abs().sum() > 0 for g in grads[1:])  # double backprop reaches the parameters after layer r
    # ∂ŷ/∂m^r is piecewise constant in m^r for a ReLU tail: nothing before r can change it.
    assert grads[0].abs().sum() == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = float(value.detach())
    for _ in range(10):
        opt.zero_grad()
        constraint_value(replay, x, y, which).backward()
        opt.step()
    assert float(constraint_value(replay, x, y, which).detach()) < 0.7 * start


def test_spatial_constraint_zero_when_all_foreground_and_for_unannotated():
    g = torch.randn(2, 3, 4, 5, 5)
    everything = torch.ones(3, 10, 10, dtype=torch.bool)
    bg = background_mask(everything, (5, 5), expansion=2)
    assert spatial_constraint(g, bg).item() == 0.0
    bg = background_mask(torch.zeros(3, 10, 10, dtype=torch.bool), (5, 5), expansion=0)
    none = torch.zeros(3, dtype=torch.bool)
    assert spatial_constraint(g, bg, none).item() == 0.0
    only_first = torch.tensor([True, False, False])
    expected = g[:, 0].abs().sum()
    assert torch.allclose(spatial_constraint(g, bg, only_first), expected)  # averaged over annotated images
    assert torch.allclose(spatial_constraint(g, bg, only_first, normalise="batch"), expected / 3)
    assert torch.allclose(spatial_constraint(g, bg, form="share"), torch.ones(()))


def test_channel_constraint_matches_eq5_by_hand():
    g1 = torch.randn(2, 1, 3, 2, 2)
    g2 = torch.randn(2, 1, 3, 2, 2)
    irrelevant = torch.tensor([[True, False, True]])
    by_hand = sum(g1[:, 0, k].abs().sum() for k in (0, 2)) + g2.abs().sum()
    assert torch.allclose(channel_constraint(g1, g2, irrelevant), by_hand)
    only_k1 = torch.tensor([[False, True, False]])
    assert torch.allclose(channel_constraint(g1, g2, irrelevant, competitor_kernels=only_k1),
                          by_hand - g2[:, 0, 0].abs().sum() - g2[:, 0, 2].abs().sum())
    assert torch.allclose(channel_constraint(g1, g2, irrelevant, competitor_weight=torch.zeros(1)),
                          by_hand - g2.abs().sum())
    scaled = channel_constraint(5 * g1, 5 * g2, irrelevant, form="share")
    assert torch.allclose(scaled, channel_constraint(g1, g2, irrelevant, form="share"))  # scale-free


def test_competitor_choices():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    first = first_classes(logits, y, "label")
    s, w = competitor_classes(logits, y, first, "runner_up")
    assert s.tolist() == [1, 1] and w.tolist() == [1, 1]
    s, w = competitor_classes(logits, y, first, "wrong_top1")
    assert s.tolist() == [0, 1] and w.tolist() == [0, 1]
    assert first_classes(logits, y, "pred").tolist() == [0, 1]


def test_expansion_and_resizing_on_hand_made_masks():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 3, 3] = True
    grown = expand_mask(m, 1)
    assert grown.sum() == 9 and grown[0, 2:5, 2:5].all()
    assert expand_mask(m, 0).equal(m)
    bg = background_mask(m, (4, 4), expansion=0)  # cell (1, 1) covers pixels 2..3 → object
    expected = torch.ones(4, 4)
    expected[1, 1] = 0
    assert bg.shape == (1, 1, 4, 4) and torch.equal(bg[0, 0], expected)
    bg = background_mask(m, (4, 4), expansion=1)  # pixels 2..4 → cells 1 and 2
    expected[1:3, 1:3] = 0
    assert torch.equal(bg[0, 0], expected)
    assert background_mask(m, (16, 16), expansion=0).sum() == 256 - 4  # upsampled feature maps
    assert [default_expansion(s) for s in (28, 32, 96, 224)] == [2, 3, 10, 30]
    assert default_expansion(48) == 5 and default_expansion(448) == 60


def test_mask_files_boxes_and_labelme(tmp_path):
    from PIL import Image

    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[4:8, 4:8] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "b.json").write_text(json.dumps({"imageHeight": 16, "imageWidth": 16, "shapes": [
        {"label": "obj", "shape_type": "polygon", "points": [[0, 0], [7, 0], [7, 7], [0, 7]]}]}))
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(tmp_path / "c.png")
    masks = load_masks(tmp_path, ["a", "b", "missing"], 8)
    assert set(masks) == {"a", "b"}
    assert masks["a"].sum() == 4 and masks["a"][2:4, 2:4].all()
    assert masks["b"][:4, :4].all() and not masks["b"][5:, 5:].any()
    with pytest.raises(UserError, match="aspect"):
        load_masks(tmp_path, ["c"], 8)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("id,x0,y0,x1,y1\na,1,2,3,4\n")
    got = load_boxes(boxes, ["a"], 8)["a"]
    assert got.sum() == 4 and got[2:4, 1:3].all()
    boxes.write_text("id,x0,y0,x1,y1\na,5,2,3,4\n")
    with pytest.raises(UserError, match="empty or outside"):
        load_boxes(boxes, ["a"], 8)


def test_check_masks_warns_and_refuses():
    good = torch.zeros(4, 4, dtype=torch.bool)
    good[1, 1] = True
    with pytest.warns(UserWarning) as caught:
        kept = check_masks({"ok": good, "empty": torch.zeros(4, 4, dtype=torch.bool),
                            "full": torch.ones(4, 4, dtype=torch.bool)}, 4)
    assert set(kept) == {"ok"}
    messages = " ".join(str(w.message) for w in caught)
    assert "empty" in messages and "whole image" in messages
    with pytest.raises(UserError, match="images are"):
        check_masks({"ok": torch.ones(5, 5, dtype=torch.bool)}, 4)
    with pytest.raises(UserError, match="no usable mask"):
        check_masks({"e": torch.zeros(4, 4, dtype=torch.bool)}, 4)


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


@pytest.mark.slow
def test_shortcut_mnist_is_deterministic_with_masks_and_a_clean_twin():
    from modeldoctor.data.shortcut import parse_spec
    from modeldoctor.data.sources import load_data

    a, clean = load_data("shortcut-mnist"), load_data("shortcut-mnist:clean")
    assert a.input_size == 48 and (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    assert torch.equal(a.test.images, clean.test.images) and torch.equal(a.val.images, clean.val.images)
    assert not torch.equal(a.train.images, clean.train.images)  # only the training textures differ
    sid = a.train.ids[0]
    mask = a.masks[sid]
    assert mask.shape == (48, 48) and 0.03 < mask.float().mean() < 0.4
    assert (a.train.raw(0)[0][mask] > 0.25).all()  # the mask sits on the digit's bright pixels
    assert torch.equal(load_data("shortcut-mnist").train.images[:50], a.train.images[:50])
    with pytest.raises(UserError, match="unknown shortcut-mnist option"):
        parse_spec("colour=1")


def test_mean_std_over_seeds():
    from modeldoctor.doctor.arms import mean_std

    runs = [{s: {"accuracy": a, "per_class": [a, 1 - a]} for s in ("val", "test")} for a in (0.5, 0.7)]
    out = mean_std(runs)
    assert out["seeds"] == 2 and out["test"]["accuracy"] == pytest.approx(0.6)
    assert out["std"]["val"]["accuracy"] == pytest.approx(0.1414, abs=1e-3)
    assert out["val"]["per_class"] == pytest.approx([0.6, 0.4])
