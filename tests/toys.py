"""Tiny models and batches shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


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


class Items(Dataset):
    """(image, label, index) items over two tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), i


def layer_gradient(model: nn.Module, layer: str, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """∂(Σ logits, or the logit of ``target``)/∂(raw output of ``layer``) by plain autograd, the hook removed."""
    held = {}

    def hook(module, inputs, output):
        held["z"] = output.detach().requires_grad_(True)
        return held["z"]

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.sum() if target is None else logits[:, target].sum()
    return torch.autograd.grad(score, held["z"])[0]
