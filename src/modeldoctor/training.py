"""Training and evaluation loops shared by ``train``, ``treat`` and the benchmarks.

``fit`` takes a loss function ``loss_fn(model, x, y, index) -> (loss, logits)`` so regularisers and the
treatment's constraints plug in without a second loop.  The best epoch is chosen on validation only.
Everything runs on the model's own device.  Under torchrun, ``fit`` is data-parallel: a distributed sampler
gives each rank ``batch_size / world`` samples of every global batch and gradients are averaged over the ranks
after each backward — by :class:`~torch.nn.parallel.DistributedDataParallel` for plain cross-entropy training,
explicitly (:func:`~modeldoctor.core.distributed.average_gradients`) for any other loss; ``predict`` shards
batches and gathers the logits.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from modeldoctor.core import distributed
from modeldoctor.core.device import autocast, model_device, to_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import atomic_path
from modeldoctor.core.layers import train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.data.bundle import ImageSplit, batch_loader, make_loader, unpack_batch, worker_options

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class TrainConfig:
    """Optimiser and schedule; stored in every checkpoint so the treatment can reuse them (paper, Eq. 7 text)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    precise_bn: str = "auto"  # on / off / auto = on when a BatchNorm layer's momentum is below 0.1 (see fit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# Families whose torchvision reference recipe does not use SGD, with that recipe's optimiser settings scaled
# linearly to a batch of 128 (references/classification/README.md).  EfficientNet-B's RMSProp recipe (the paper's,
# lr 0.256 per 4096 images) is left out: trained from scratch for 3 epochs it reached 14.6% validation accuracy
# where SGD reached 45.8% (28 px) and 34.2% vs 89.0% (64 px) — benchmarks/recipes.py.  Everything else: SGD.
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    "convnext": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.05},
    "mobilenet_v3": {"optimizer": "rmsprop", "lr": 0.008, "weight_decay": 1e-5},
}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "rmsprop": 0.008}


def recipe_for(spec: str) -> dict[str, Any]:
    """The optimiser settings for model ``spec`` (``timm:`` names by the same family prefixes): its family's
    reference recipe, else SGD at lr 0.05 with weight decay 5e-4."""
    name = spec.removeprefix("timm:")
    for prefix, recipe in FAMILY_RECIPES.items():
        if name.startswith(prefix):
            return dict(recipe)
    return {"optimizer": "sgd", "lr": DEFAULT_LR["sgd"], "weight_decay": 5e-4}


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None):
    with autocast(x.device):
        logits = select_logits(model(x))
    return F.cross_entropy(logits.float(), y), logits


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":  # alpha and eps of torchvision's reference (TensorFlow's RMSProp defaults)
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or rmsprop")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise UserError(f"unknown schedule {cfg.schedule!r}; choose cosine or constant")


@torch.no_grad()
def predict(model: nn.Module, split: ImageSplit, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels (on the CPU) for a whole split, in split order, in eval mode (mode restored afterwards).

    Under torchrun each rank runs every ``world``-th batch and the logits are gathered, so every rank returns
    the same tensors a single process computes."""
    device = model_device(model)
    batches = [range(s, min(s + batch_size, len(split))) for s in range(0, len(split), batch_size)]
    mine = distributed.shard(batches)
    rows, outs, labels = [], [], []
    with train_mode(model, False):
        for part, batch in zip(mine, batch_loader(split, mine)):
            x, y, _ = unpack_batch(batch)
            with autocast(device):
                outs.append(select_logits(model(x.to(device))).float().cpu())
            rows.append(torch.as_tensor(part))
            labels.append(torch.as_tensor(y).long())
    classes = int(distributed.all_reduce(torch.tensor([outs[0].shape[1] if outs else 0]), "max"))
    logits = torch.zeros(len(split), classes)
    label = torch.zeros(len(split), dtype=torch.long)
    if outs:
        logits[torch.cat(rows)] = torch.cat(outs)
        label[torch.cat(rows)] = torch.cat(labels)
    return distributed.all_reduce(logits), distributed.all_reduce(label)  # disjoint fills: exact


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Accuracy overall and per class, confusion matrix (rows = true), confidence statistics."""
    prob = logits.softmax(1)
    conf, pred = prob.max(1)
    correct = pred == labels
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1)).tolist()
    return {
        "accuracy": correct.float().mean().item() if len(labels) else 0.0,
        "per_class": per_class,
        "num_samples": int(len(labels)),
        "confusion": confusion.tolist(),
        "confidence": {
            "mean": conf.mean().item(),
            "mean_correct": conf[correct].mean().item() if correct.any() else float("nan"),
            "mean_wrong": conf[~correct].mean().item() if (~correct).any() else float("nan"),
        },
    }


def evaluate(model: nn.Module, split: ImageSplit, num_classes: int, batch_size: int = 256) -> dict[str, Any]:
    logits, labels = predict(model, split, batch_size)
    return metrics_from_logits(logits, labels, num_classes)


def chance_accuracy(split: ImageSplit, num_classes: int) -> float:
    """The accuracy of always answering the split's most frequent class."""
    counts = torch.bincount(split.labels, minlength=num_classes)
    return counts.max().item() / max(1, counts.sum().item())


def train_step(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
               loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor | None:
    """One update: loss, zero_grad, backward, optimiser and schedule step; ``None`` (no update) on a non-finite loss
    (on any rank: every rank skips together).  Under torchrun gradients are averaged over the ranks: by the
    backward itself when ``model`` is a :class:`DistributedDataParallel`, else explicitly."""
    loss, _ = loss_fn(model, x, y, index)
    if not distributed.all_true(bool(torch.isfinite(loss))):
        return None
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if not isinstance(model, DistributedDataParallel):
        distributed.average_gradients([p for p in model.parameters() if p.requires_grad])
    opt.step()
    sched.step()
    return loss.detach()


def fit(model: nn.Module, train: ImageSplit, val: ImageSplit, num_classes: int, cfg: TrainConfig,
        loss_fn: LossFn = cross_entropy_loss, state_path: str | Path | None = None, resume: bool = False,
        desc: str = "train", keep: str = "best", stop_after: int | None = None) -> dict[str, Any]:
    """Train ``model`` in place and leave it holding the weights of the best validation epoch (``keep="last"``:
    of the last epoch).

    With ``state_path`` the full training state (model, optimiser, schedule, best weights, epoch) is
    saved atomically after every epoch; ``resume=True`` continues from it.  Epoch e's data order
    depends only on ``(seed, e)``, so a resumed run replays exactly what an uninterrupted one does.
    Stops with the last good weights kept when the loss becomes NaN or infinite.  ``stop_after`` ends after that many epochs
    of the ``cfg.epochs`` schedule (a trial that ``resume=True`` with the same ``state_path`` can continue).
    """
    torch.manual_seed(cfg.seed)
    device, world = model_device(model), distributed.world_size()
    distributed.broadcast_module(model)
    batch_size = max(1, cfg.batch_size // world)  # per rank: the global batch stays cfg.batch_size
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(math.ceil(len(train) / world) / batch_size)
    sched = make_scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    best: dict[str, Any] = {"epoch": -1, "val_accuracy": -1.0, "state": copy.deepcopy(model.state_dict())}
    history: list[dict[str, float]] = []
    start = 0
    if resume and state_path and Path(state_path).exists():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        best = saved["best"]
        history = saved["history"]
        start = saved["epoch"] + 1
        torch.set_rng_state(saved["rng"].cpu())
    stopped = None
    stepped = data_parallel(model, loss_fn)
    for epoch in range(start, cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)):
        model.train()
        total, seen = 0.0, 0
        loader = epoch_loader(train, batch_size, cfg.seed * 100_003 + epoch)
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", file=sys.stderr, leave=False,
                   disable=None if distributed.is_main() else True)
        for batch in bar:
            x, y, idx = to_device(device, *unpack_batch(batch))
            loss = train_step(stepped, opt, sched, loss_fn, x, y, idx)
            if loss is None:
                stopped = f"non-finite loss at epoch {epoch + 1}; kept the best weights so far"
                break
            total += loss.item() * len(y)
            seen += len(y)
        if stopped:
            break
        if wants_precise_bn(model, cfg.precise_bn):
            recalibrate_batchnorm(model, train, batch_size, seed=cfg.seed * 100_003 + epoch)
        distributed.broadcast_module(model)  # BatchNorm statistics: rank 0's, as DDP keeps them
        total, seen = distributed.all_reduce(torch.tensor([total, float(seen)], dtype=torch.float64)).tolist()
        val_acc = evaluate(model, val, num_classes)["accuracy"]
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_accuracy": val_acc})
        if val_acc > best["val_accuracy"] or keep == "last":
            best = {"epoch": epoch + 1, "val_accuracy": val_acc, "state": copy.deepcopy(model.state_dict())}
        if state_path and distributed.is_main():
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "best": best, "history": history,
                            "epoch": epoch, "rng": torch.get_rng_state()}, tmp)
    distributed.barrier()  # nobody reads a state file rank 0 is still writing
    model.load_state_dict(best["state"])
    model.eval()
    return {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "history": history,
            "stopped": stopped}


def data_parallel(model: nn.Module, loss_fn: LossFn) -> nn.Module:
    """What ``fit`` steps: under torchrun, plain cross-entropy training goes through
    :class:`DistributedDataParallel` (gradients all-reduced in buckets during the backward, BatchNorm buffers
    broadcast from rank 0 before each forward); anything else — the treatment's Eq. 7 loss, double backpropagation
    — steps the model itself and :func:`train_step` averages the gradients after the backward, because those
    losses run the unwrapped model's noise replays and ``autograd.grad(create_graph=True)``, which DDP's reducer
    does not support (its hooks would fire inside the inner gradient)."""
    if not distributed.active() or loss_fn is not cross_entropy_loss:
        return model
    device = model_device(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


PRECISE_BN_BATCHES = 64


def wants_precise_bn(model: nn.Module, setting: str) -> bool:
    """``"auto"``: a BatchNorm layer with momentum below 0.1 (MobileNet-V3 and EfficientNet use 0.01): after a short
    training its running statistics still lean on their initial values and evaluation sits at chance."""
    if setting not in ("auto", "on", "off"):
        raise UserError(f"precise_bn must be auto, on or off, got {setting!r}")
    slow = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < 0.1
               for m in model.modules())
    return setting == "on" or (setting == "auto" and slow)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: ImageSplit, batch_size: int, seed: int = 0,
                          batches: int = PRECISE_BN_BATCHES) -> None:
    """Precise BatchNorm (Wu & Johnson 2021): each BatchNorm layer's running mean and variance become the plain
    average over ``batches`` training batches at the current weights (train-mode forward, no gradient); the
    layers' momenta and every module's mode are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    device = model_device(model)
    with train_mode(model, True):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        try:
            for i, batch in enumerate(make_loader(split, batch_size, shuffle=True, seed=seed)):
                if i == batches:
                    break
                model(to_device(device, *unpack_batch(batch))[0])
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum


def epoch_loader(train: ImageSplit, batch_size: int, seed: int) -> DataLoader:
    """One epoch's shuffled batches, in an order that depends only on ``seed``; under torchrun this rank's share
    (a distributed sampler with the same seed on every rank)."""
    if not distributed.active():
        return make_loader(train, batch_size, shuffle=True, seed=seed)
    sampler: DistributedSampler[int] = DistributedSampler(train, distributed.world_size(), distributed.rank(),
                                                          shuffle=True, seed=seed)
    return DataLoader(train, batch_size=batch_size, sampler=sampler, **worker_options())
