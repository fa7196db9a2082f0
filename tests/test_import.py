"""Bring your own model: weights files in common wrappers, prefix mapping, `modeldoctor import` end to end,
md.from_model on a live module, and the checks that refuse a model that does not fit the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import modeldoctor as md
from modeldoctor import cli
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors
from modeldoctor.data.sources import register_dataset
from modeldoctor.io.weights import fit_state_dict, read_state_dict
from modeldoctor.models.checkpoint import load_checkpoint, weights_hash
from modeldoctor.models.zoo import build_model


def _bars(spec: str = "bars", input_size: int | None = None) -> DataBundle:
    """3 classes, 16 px: a bright bar whose height is the class, over noise."""
    g = torch.Generator().manual_seed(0)
    n, size = 90, 16
    labels = np.arange(n) % 3
    images = 0.3 * torch.rand(n, 1, size, size, generator=g)
    for i, c in enumerate(labels):
        images[i, :, 2 + 4 * int(c):7 + 4 * int(c), 5:11] = 1.0
    return bundle_from_tensors(spec, images, labels, [f"bar{i}" for i in range(n)], ["a", "b", "c"],
                               [np.arange(0, 60), np.arange(60, 75), np.arange(75, 90)], input_size)


register_dataset("bars", lambda arg, input_size: _bars("bars", input_size))


@pytest.fixture(scope="module")
def users_model() -> nn.Module:
    """Trained the way a user would, outside modeldoctor, with its own normalisation (mean 0.5, std 0.25)."""
    torch.manual_seed(0)
    data = _bars()
    model = build_model("simple-cnn-narrow", 3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = (data.train.images.float() - 0.5) / 0.25
    y = data.train.labels
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_wrappers_and_prefixes_map_onto_the_model(users_model: nn.Module, tmp_path: Path) -> None:
    state = users_model.state_dict()
    lightning = {"state_dict": {f"model.module.{k}": v for k, v in state.items()}, "epoch": 3,
                 "hyper_parameters": {"lr": 0.1}}
    lightning["state_dict"]["loss_fn.weight"] = torch.ones(3)
    torch.save(lightning, tmp_path / "lightning.ckpt")
    read = read_state_dict(tmp_path / "lightning.ckpt")
    fitted = fit_state_dict(build_model("simple-cnn-narrow", 3, 1), read, "lightning.ckpt")
    assert fitted.stripped == ["model.", "module."] and fitted.unexpected == ["loss_fn.weight"]
    assert all(torch.equal(fitted.state[k], v) for k, v in state.items())
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # an older PyTorch's file
    assert fit_state_dict(build_model("simple-cnn-narrow", 3, 1), old, "old").missing
    with pytest.raises(UserError, match="lacks 1 of the model's .* weights \\(fc.bias\\)"):
        fit_state_dict(build_model("simple-cnn-narrow", 3, 1), {k: v for k, v in state.items() if k != "fc.bias"}, "x")
    with pytest.raises(UserError, match="shape differs for fc.weight"):
        fit_state_dict(build_model("simple-cnn-narrow", 4, 1), state, "x")
    torch.save(users_model, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        read_state_dict(tmp_path / "pickled.pt")
    assert weights_hash(read_state_dict(tmp_path / "pickled.pt", trust=True)) == weights_hash(state)
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        read_state_dict(tmp_path / "empty.pt")


def test_import_command_writes_a_checkpoint_that_scores_what_the_model_scores(users_model: nn.Module, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "mine.pth"
    torch.save({"model": {f"module.{k}": v for k, v in users_model.state_dict().items()}}, weights)
    code = cli.main(["import", "--model", "simple-cnn-narrow", "--weights", str(weights), "--data", "bars",
                     "--mean", "0.5", "--std", "0.25", "--classes", "low,mid,high", "--out", str(tmp_path / "m.pt"),
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["checkpoint"] == str(tmp_path / "m.pt") and result["weights"].startswith("mapped")
    model, meta = load_checkpoint(tmp_path / "m.pt")
    assert weights_hash(model) == weights_hash(users_model) and meta.class_names == ["low", "mid", "high"]
    assert meta.mean == [0.5] and meta.std == [0.25] and meta.train_config["assumed_recipe"] is True
    data = _bars()
    x = (data.test.images.float() - 0.5) / 0.25
    expected = (users_model(x).argmax(1) == data.test.labels).float().mean().item()
    assert result["accuracy"]["test"] == pytest.approx(expected) and expected > 0.9
    assert meta.metrics["test"]["accuracy"] == pytest.approx(expected) and result["warnings"] == []
    assert weights.is_file()  # the input is never touched
    code = cli.main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--json"])  # the checkpoint's own data
    assert code == 0 and json.loads(capsys.readouterr().out)["metrics"]["test"]["accuracy"] == pytest.approx(expected)


def test_from_model_takes_a_live_module_and_leaves_it_as_found(users_model: nn.Module) -> None:
    data = _bars()
    users_model.train()
    before = weights_hash(users_model)
    imported = md.from_model(users_model, data, mean=[0.5], std=[0.25])
    assert users_model.training and weights_hash(users_model) == before
    assert imported.meta.model == "live:SimpleCNN" and imported.metrics["val"]["accuracy"] > 0.9
    assert imported.to_dict()["accuracy"]["test"] == imported.metrics["test"]["accuracy"]
    wrong = md.from_model(users_model, _bars())  # the data's own statistics: not what it was trained with
    assert wrong.metrics["val"]["accuracy"] < imported.metrics["val"]["accuracy"]
    with pytest.raises(UserError, match="has 3 outputs but bars has 2 classes|--classes names 2 classes"):
        md.from_model(users_model, _bars(), class_names=["x", "y"])


def test_from_model_refuses_what_does_not_fit(users_model: nn.Module) -> None:
    with pytest.raises(UserError, match="has 3 outputs but bars has 4 classes"):
        bigger = _bars()
        bigger.class_names = ["a", "b", "c", "d"]
        md.from_model(users_model, bigger)
    with pytest.raises(UserError, match="AlexNet needs inputs of at least 63 px, the data has 16 px; pass --input-size 63"):
        md.from_model(build_model("alexnet", 3, 1), _bars())
    flat = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    with pytest.raises(UserError, match="has no Conv2d, norm or block layer"):
        md.from_model(flat, _bars())
