"""Minimum input sizes are probed (and cached), default layers are spatial and on the main path, fixed-size
transformers say their size; every listed architecture builds for 1 and 3 input channels and trains at its probed
minimum (one pixel less must fail, so the probe is exact); and (slow) every torchvision classification builder and a
few timm families, transformers included, go through train → diagnose → treat.
"""

from __future__ import annotations

import os

import pytest
import torch

from modeldoctor.api.architectures import architecture_specs, check_architecture
from modeldoctor.core.errors import UserError
from modeldoctor.core.outputs import select_logits
from modeldoctor.models import probe
from modeldoctor.models.zoo import build_model, min_input_size

ARCHITECTURES = ["resnet18", "resnet34", "resnet50", "vgg16", "alexnet", "wide_resnet50_2", "resnext50_32x4d",
                 "densenet121", "efficientnet_v2_s", "googlenet", "inception_v3", "mobilenet_v2",
                 "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0", "timm:xception41", "timm:seresnet34",
                 "simple-cnn", "resnet20"]


def _forward_fails(model: torch.nn.Module, channels: int, size: int) -> bool:
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, channels, size, size))
    except (RuntimeError, ValueError):
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_builds_and_trains_at_its_minimum_input(name: str) -> None:
    size = min_input_size(name)
    for channels in (1, 3):
        torch.manual_seed(0)
        model = build_model(name, num_classes=7, in_channels=channels, input_size=size)
        with torch.no_grad():
            assert select_logits(model.eval()(torch.randn(1, channels, size, size))).shape == (1, 7)
        model.train()  # BatchNorm in train mode needs more than one value per channel: batch of 2
        logits = select_logits(model(torch.randn(2, channels, size, size)))
        assert logits.shape == (2, 7)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 6])).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
        if size > 1:
            assert _forward_fails(model, channels, size - 1), f"{name} also works at {size - 1} px"
    if size > 1:
        with pytest.raises(UserError, match=f"at least {size} px"):
            build_model(name, num_classes=7, in_channels=3, input_size=size - 1)




class NeedsNine(torch.nn.Module):
    """Two unpadded 5×5 convs: 9 px is the smallest input; BatchNorm in train mode needs a batch of two."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = torch.nn.Conv2d(1, 2, 5), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.bn(self.a(x))).mean((2, 3))


def test_probe_finds_the_smallest_input_without_touching_the_model() -> None:
    model = NeedsNine().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probe.probe_min_input(model, 1) == 9
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_min_input_is_cached_on_disk_per_library_version(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(probe, "probe_min_input", lambda model, c: calls.append(c) or 17)
    key = probe.cache_key("squeezenet1_1", 3)
    assert probe.remembered(key, lambda: probe.probe_min_input(None, 3)) == 17
    assert probe.remembered(key, lambda: probe.probe_min_input(None, 3)) == 17 and calls == [3]
    assert "torchvision" in key and probe.cache_key("pkg.mod:factory", 3) is None
    (tmp_path / "modeldoctor" / "min_input.json").write_text("{ damaged")
    assert probe.remembered(key, lambda: 5) == 5  # a damaged cache is probed again and rewritten


def test_fixed_size_transformers_say_their_size_in_one_line() -> None:
    with pytest.raises(UserError, match="vit_b_32 takes 224 px inputs only .* pass --input-size 224"):
        build_model("vit_b_32", 3, 3, 256)


def test_layers_json_names_a_spatial_main_path_default(capsys: pytest.CaptureFixture) -> None:
    import json

    from modeldoctor import cli

    assert cli.main(["layers", "--model", "regnet_y_400mf", "--input-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    default = next(layer for layer in out["layers"] if layer["default"])
    assert out["default"] == default["name"] and default["spatial"] and default["main_path"]
    assert ".se." not in out["default"]
    se = [layer for layer in out["layers"] if ".se." in layer["name"]]
    assert se and not any(layer["spatial"] for layer in se)


def test_family_representatives_are_torchvision_builders() -> None:
    assert set(architecture_specs(representatives=True)) <= set(architecture_specs())


# Every builder takes over an hour on two cores (benchmarks/architectures.py writes that table); CI runs the
# smallest of each family unless MODELDOCTOR_ALL_ARCHITECTURES=1.
@pytest.mark.slow
@pytest.mark.parametrize("spec", architecture_specs(representatives=not os.environ.get("MODELDOCTOR_ALL_ARCHITECTURES")))
def test_every_builder_goes_through_train_diagnose_treat(spec: str) -> None:
    check = check_architecture(spec)  # transformers included: their layers are read as token maps
    assert check.passed, check
