"""Model construction by name: torchvision builders, ``timm:NAME``, small built-ins, ``pkg.module:factory``.

A model spec is a string and is stored in the checkpoint, so a checkpoint rebuilds its own architecture.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.models.probe import cache_key, fixed_input_size, probe_min_input, remembered, require_cnn
from modeldoctor.models.vit import TinyViT


class SimpleCNN(nn.Module):
    """A compact CNN for small images: three conv-BN-ReLU stages, global pooling, one linear layer.

    ``stem_stride=2`` halves the resolution in the first conv (cheap on ≥ 48-px inputs).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, stem_stride: int = 1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """CIFAR ResNet block (He et al. 2016, option B shortcut: 1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32-px images; ``resnet20`` is n = 3 with widths 16/32/64."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(cin if b == 0 else cout, cout, 2 if (i > 0 and b == 0) else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "simple-cnn": lambda num_classes, in_channels: SimpleCNN(num_classes, in_channels),
    "simple-cnn-narrow": lambda num_classes, in_channels: SimpleCNN(num_classes, in_channels, width=8),
    "simple-cnn-s2": lambda num_classes, in_channels: SimpleCNN(num_classes, in_channels, width=16, stem_stride=2),
    "resnet20": lambda num_classes, in_channels: CifarResNet(20, num_classes, in_channels),
    "resnet32": lambda num_classes, in_channels: CifarResNet(32, num_classes, in_channels),
    "tiny-vit": lambda num_classes, in_channels: TinyViT(num_classes, in_channels),
}


def torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm))


@functools.cache
def min_input_size(spec: str, in_channels: int = 3) -> int:
    """The smallest square input ``spec`` takes, probed (:mod:`modeldoctor.models.probe`) and cached."""
    def probe() -> int:
        model = _construct(spec, 2, in_channels)
        require_cnn(model, spec)
        return probe_min_input(model, in_channels)

    return remembered(cache_key(spec, in_channels), probe)


def build_model(spec: str, num_classes: int, in_channels: int = 3, input_size: int | None = None) -> nn.Module:
    """Build an untrained model from a spec string, with ``num_classes`` outputs and ``in_channels`` inputs.

    Raises :class:`UserError` for unknown names, models without any layer that yields a spatial feature map
    (:func:`~modeldoctor.models.probe.require_cnn`), and inputs below the architecture's minimum size.
    """
    model = _construct(spec, num_classes, in_channels)
    require_cnn(model, spec)
    if input_size is not None and input_size < (need := min_input_size(spec, in_channels)):
        raise UserError(f"{spec} needs inputs of at least {need} px, got {input_size} px; "
                        f"pass --input-size {need} or larger")
    fixed = fixed_input_size(model)
    if input_size is not None and fixed is not None and input_size != fixed:
        raise UserError(f"{spec} takes {fixed} px inputs only (its position embeddings are fixed), got {input_size} px;"
                        f" pass --input-size {fixed}")
    if input_size is not None:
        require_cnn(model, spec, (in_channels, input_size, input_size))
    return model


def _construct(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    if spec in BUILTINS:
        return BUILTINS[spec](num_classes, in_channels)
    if spec.startswith("timm:"):
        return _build_timm(spec[5:], num_classes, in_channels)
    if ":" in spec:
        return _build_user(spec, num_classes, in_channels)
    return _build_torchvision(spec, num_classes, in_channels)


def _build_torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models as tvm

    valid = torchvision_names()
    if name not in valid:
        close = difflib.get_close_matches(name, valid + sorted(BUILTINS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        common = ("resnet18", "resnet50", "vgg16", "densenet121", "inception_v3", "efficientnet_v2_s", "mobilenet_v2")
        raise UserError(f"unknown model {name!r}; {hint}choose one of {', '.join(sorted(BUILTINS))}, a torchvision "
                        f"classifier ({', '.join(common)}, ... {len(valid)} in all, see "
                        "torchvision.models.list_models()), timm:NAME, or package.module:factory")
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        # Auxiliary heads only exist to help training from scratch and break on small inputs.
        kwargs.update(aux_logits=False, transform_input=False, init_weights=True)
    model = tvm.get_model(name, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _build_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError("timm is not installed; run `pip install 'modeldoctor[timm]'` to use timm:NAME models") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except RuntimeError as exc:
        raise UserError(f"timm does not know {name!r} ({exc}); see timm.list_models()") from None


def _build_user(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {spec!r} ({exc}); give package.module:factory importable from here") from None
    model = factory(num_classes=num_classes, in_channels=in_channels)
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                            module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                            module.groups if module.groups == 1 else in_channels,
                            module.bias is not None, module.padding_mode)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            return
    raise UserError("the model has no Conv2d layer to adapt to the input channels")
