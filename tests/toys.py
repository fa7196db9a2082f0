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


SHAPES = 4


def shape_stamp(kind: int) -> torch.Tensor:
    """A 6×6 binary shape per class: horizontal bar, vertical bar, cross, hollow square."""
    s = torch.zeros(6, 6, dtype=torch.bool)
    if kind == 0:
        s[2:4, :] = True
    elif kind == 1:
        s[:, 2:4] = True
    elif kind == 2:
        s[2:4, :] = s[:, 2:4] = True
    else:
        s[0, :] = s[-1, :] = s[:, 0] = s[:, -1] = True
    return s


def background_shortcut(n_train: int = 480, size: int = 20, corr: float = 1.0, seed: int = 0):
    """A tiny background-shortcut set: a class shape at a random place on a flat grey whose level is the class in
    ``corr`` of training and validation images and random at test; exact shape masks.  Returns a DataBundle."""
    import numpy as np

    from modeldoctor.data.bundle import bundle_from_tensors

    g = torch.Generator().manual_seed(seed)
    n = n_train + 120 + 240
    labels = torch.arange(n) % SHAPES
    level = labels.clone()
    test = torch.arange(n) >= n_train + 120
    decorrelated = test | (torch.rand(n, generator=g) >= corr)
    level[decorrelated] = torch.randint(SHAPES, (int(decorrelated.sum()),), generator=g)
    images = (0.1 + 0.12 * level.float()).view(n, 1, 1, 1) + 0.03 * torch.randn(n, 1, size, size, generator=g)
    masks = {}
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        m = torch.zeros(size, size, dtype=torch.bool)
        m[r:r + 6, c:c + 6] = shape_stamp(int(labels[i]))
        images[i, 0][m] = 1.0
        masks[str(i)] = m
    parts = [np.arange(n_train), np.arange(n_train, n_train + 120), np.arange(n_train + 120, n)]
    return bundle_from_tensors("toy-shortcut", images.clamp(0, 1), labels.numpy(), [str(i) for i in range(n)],
                               [f"shape{k}" for k in range(SHAPES)], parts, None, masks)


class TinyNet(nn.Module):
    def __init__(self, classes: int = SHAPES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).amax((2, 3)))
