"""Every listed architecture builds for 1 and 3 input channels and trains at its smallest supported input.

The smallest size comes from models.MIN_INPUT_SIZE; one pixel less must fail, so the table is exact.
"""

from __future__ import annotations

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.core.outputs import select_logits
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
