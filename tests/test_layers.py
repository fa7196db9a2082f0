"""core/layers.py: layer addressing, hooks that always let go, feature capture, and train_mode's full restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import (
    FeatureCapture,
    LayerHooks,
    conv_layer_names,
    default_layer,
    layer_table,
    replace_output,
    resolve_layer,
    resolve_layers,
    train_mode,
)
from modeldoctor.models.zoo import build_model
from toys import Toy


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_layer_table_lists_convs_with_shapes_and_depth_and_releases_hooks() -> None:
    torch.manual_seed(1)
    model = build_model("resnet20", 3, 2).train()
    table = layer_table(model, (2, 8, 8))
    assert [t.depth for t in table] == list(range(len(table))) and all(t.kind == "Conv2d" for t in table)
    assert table[0].name == "conv1" and table[0].out_shape == (16, 8, 8)
    assert table[-1].name == default_layer(model, (2, 8, 8)) == "layer3.2.conv2" and table[-1].out_shape == (64, 2, 2)
    assert [t.order for t in table] == list(range(len(table)))  # resnet20 registers its convs in running order
    assert _hooks(model) == 0 and model.training


def test_resolve_by_name_or_module_and_one_line_errors() -> None:
    model = Toy()
    assert conv_layer_names(model) == ["conv1", "conv2"] and default_layer(model, (1, 8, 8)) == "conv2"
    assert resolve_layer(model, model.bn) == ("bn", model.bn)
    assert resolve_layers(model, None, (1, 8, 8)) == ["conv2"]
    assert resolve_layers(model, "conv1") == ["conv1"] and resolve_layers(model, [model.conv1, "fc"]) == ["conv1", "fc"]
    with pytest.raises(UserError, match="unknown layer 'nope'; valid conv layers include: conv1, conv2"):
        resolve_layer(model, "nope")
    with pytest.raises(UserError, match="unknown layer ''"):
        resolve_layer(model, "")
    with pytest.raises(UserError, match="not part of this model"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(UserError, match="named twice"):
        resolve_layers(model, ["conv1", model.conv1])
    with pytest.raises(UserError, match="no Conv2d layer"):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2))


class SideBranchLast(nn.Module):
    """A block whose shortcut conv runs after its last main-path conv, then squeeze-excitation on a 1×1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.squeeze = nn.Conv2d(4, 4, 1)
        self.shortcut = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        h = h * torch.sigmoid(self.squeeze(h.mean((2, 3), keepdim=True))) + self.shortcut(x)
        return self.fc(h.mean((2, 3)))


def test_default_layer_is_the_last_spatial_main_path_conv_in_running_order() -> None:
    model = SideBranchLast()
    table = {t.name: t for t in layer_table(model, (1, 6, 6))}
    assert [n for n, t in sorted(table.items(), key=lambda kv: kv[1].order)] == ["body", "squeeze", "shortcut"]
    assert not table["squeeze"].spatial and table["body"].spatial and not table["shortcut"].main_path
    assert default_layer(model, (1, 6, 6)) == "body"
    # At a 1-px input nothing is spatial: the last main-path conv to run is the best there is.
    assert default_layer(model, (1, 1, 1)) == "squeeze"


def test_train_mode_restores_every_submodule_flag_also_after_an_exception() -> None:
    model = Toy().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model: model.train(True) alone would unfreeze it
    before = [m.training for m in model.modules()]
    with train_mode(model, False):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="inside"), train_mode(model, True):
        assert all(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before


def _raise(output: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("in the hook")


def test_hooks_are_removed_on_exit_and_after_an_exception() -> None:
    model, x = Toy().eval(), torch.randn(2, 1, 8, 8)
    with LayerHooks(model) as hooks:
        hooks.add("conv1", lambda module, inputs, output: None)
        hooks.add(model.fc, lambda module, inputs, output: None)
        assert _hooks(model) == 2
    assert _hooks(model) == 0
    plain = model(x)
    with replace_output(model, "fc", lambda out: 2 * out):
        assert torch.allclose(model(x), 2 * plain)
    with pytest.raises(RuntimeError, match="in the hook"), replace_output(model, "conv2", _raise):
        model(x)
    assert _hooks(model) == 0 and torch.equal(model(x), plain)


class InplaceAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_feature_capture_clones_reads_inputs_and_refuses_shared_modules() -> None:
    torch.manual_seed(0)
    model, x = InplaceAfter().eval(), torch.randn(2, 1, 5, 5)
    with FeatureCapture(model, ["conv"]) as cap, torch.no_grad():
        out = model(x)
    assert bool((cap.captured["conv"] < 0).any())  # the in-place ReLU after the layer did not reach the copy
    assert torch.equal(cap.captured["conv"].clamp_min(0), out) and _hooks(model) == 0
    toy = Toy().eval()
    with FeatureCapture(toy, ["fc"], source="input") as cap, torch.no_grad():
        toy(torch.randn(3, 1, 8, 8))
    assert cap.captured["fc"].shape == (3, 6)  # the pooled features entering the linear layer
    shared = Shared()
    with pytest.raises(UserError, match="runs more than once"), FeatureCapture(shared, ["conv"]):
        shared(x)
    assert _hooks(shared) == 0
