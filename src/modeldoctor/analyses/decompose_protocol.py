"""Decomposing the Deep as a protocol: k₁ / k₂ chosen on validation, the decomposed network retrained, every
number measured on splits that chose nothing (:func:`decompose_model`).

* k: :func:`k_curve` measures the decomposed accuracy ``A_d(k₁, k₂)`` and ``r_A = A_d / A_f`` on the validation
  split for every (k₁, k₂) of a grid (Algorithm 1 always runs on the training split); :func:`choose_k` picks from
  it.  A given k₂ (the features kept per class) gets the k₁ with the best validation ``A_d``; without k₂, the
  smallest k₂ whose best validation ``r_A`` reaches ``min_r_a`` (else the best ``r_A``).  Ties: the smaller k.
* Retraining (§5.2.3: "the network can then be retrained", one epoch for CIFAR-10, ~10 for ImageNet):
  :class:`RetrainProtocol`; the paper names neither optimiser, learning rate, schedule nor checkpoint rule, so
  those are ours (``RetrainProtocol.to_dict`` says which is which).  The matched control retrains the same
  network the same way with the full layer (mask of ones, i.e. exactly the original layer).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.decompose import (
    Count,
    DecomposedLinear,
    FinalFeatures,
    accuracy,
    agreement,
    class_histogram,
    essentiality,
    final_features,
    final_linear,
    influential_features,
    instance_top_features,
    layer_logits,
    multiply_adds,
    per_class_indices,
    relative_accuracy,
    replace_module,
)
from modeldoctor.core.errors import UserError
from modeldoctor.training import TrainConfig, evaluate, fit

K_GRID: tuple[int, ...] = (1, 2, 3, 5, 8, 10, 16, 32)
PARAMETERS = ("all", "layer")


def k_curve(linear: nn.Linear, train: FinalFeatures, val: FinalFeatures, k1s: list[Count],
            k2s: list[Count]) -> list[dict[str, Any]]:
    """Validation ``A_d`` and ``r_A = A_d / A_f`` of the decomposed layer for every (k₁, k₂) in ``k1s × k2s``,
    the influential sets always found on ``train`` (the histogram is computed once per k₁)."""
    full = accuracy(val.logits, val.labels)
    curve = []
    for k1 in k1s:
        hist = class_histogram(instance_top_features(train.features, k1), train.labels, linear.out_features)
        for k2 in k2s:
            acc = accuracy(layer_logits(DecomposedLinear(linear, influential_features(hist, k2)), val.features),
                           val.labels)
            curve.append({"k1": k1, "k2": k2, "val_accuracy": acc, "val_r_A": relative_accuracy(acc, full)})
    return curve


def choose_k(curve: list[dict[str, Any]], k1: Count | None, k2: Count | None, min_r_a: float) -> dict[str, Any]:
    """The (k₁, k₂) taken from a validation :func:`k_curve`; a given k is kept as it is.

    Given k₂: ``argmax_{k₁} A_d(k₁, k₂)``.  Free k₂: ``min {k₂ : max_{k₁} r_A(k₁, k₂) ≥ min_r_a}``, else the
    ``argmax r_A``.  Ties go to the smaller k (sorted order of the grid).
    """
    rows = [r for r in curve if (k1 is None or r["k1"] == k1) and (k2 is None or r["k2"] == k2)]
    if not rows:
        raise UserError("no (k1, k2) of the grid is left to choose from; give --k1/--k2 values the grid holds")
    by_k2: dict[Count, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["k2"], r["k1"])):
        if r["k2"] not in by_k2 or r["val_accuracy"] > by_k2[r["k2"]]["val_accuracy"]:
            by_k2[r["k2"]] = r
    best = list(by_k2.values())
    reaching = [r for r in best if r["val_r_A"] >= min_r_a]
    chosen = reaching[0] if k2 is None and reaching else max(best, key=lambda r: r["val_r_A"])
    rule = ("given" if k1 is not None and k2 is not None else
            "k1 with the best validation accuracy at the given k2" if k2 is not None else
            f"smallest k2 whose best validation r_A reaches {min_r_a}" if reaching else
            f"no k2 reaches validation r_A {min_r_a}: the best r_A")
    return {"k1": chosen["k1"], "k2": chosen["k2"], "rule": rule, "val_accuracy": chosen["val_accuracy"],
            "val_r_A": chosen["val_r_A"]}


@dataclass(frozen=True)
class RetrainProtocol:
    """How the decomposed network is retrained (``epochs = 0``: not at all).

    ``parameters="all"``: every parameter of the network, with the decomposed layer in place, on the training
    images (the paper: "the network can then be retrained"); ``"layer"``: only the decomposed layer, on cached
    training features (the network below stays exactly as it was).  SGD with Nesterov momentum, weight decay,
    cosine schedule over the run; the epoch with the best validation accuracy is kept.  Masked weights stay zero.
    """

    parameters: str = "all"
    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.parameters not in PARAMETERS:
            raise UserError(f"--retrain must be one of {', '.join(PARAMETERS)}, got {self.parameters!r}")
        if self.epochs < 0:
            raise UserError(f"--retrain-epochs must be ≥ 0, got {self.epochs}")

    def train_config(self, seed: int) -> TrainConfig:
        """The same settings as a :class:`~modeldoctor.training.TrainConfig` for ``fit`` (parameters="all")."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="sgd", lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, schedule="cosine", seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The settings, and which of them the paper states (§5.2.3) and which are this implementation's."""
        return {**asdict(self), "optimizer": "sgd (nesterov)", "schedule": "cosine", "checkpoint": "best val epoch",
                "from_paper": ["parameters=all ('the network can then be retrained')",
                               "epochs=1 for CIFAR-10 (about 10 for ImageNet)"],
                "our_choice": ["optimizer", "lr", "momentum", "weight_decay", "batch_size", "schedule",
                               "checkpoint", "no data augmentation"]}


def retrain_layer(layer: DecomposedLinear, train: FinalFeatures, val: FinalFeatures, protocol: RetrainProtocol,
                  seed: int = 0) -> dict[str, Any]:
    """``parameters="layer"``: minimise ``CE(W_J x + b, y)`` over cached training features for
    ``protocol.epochs``; keeps the epoch with the best validation accuracy."""
    cfg = protocol.train_config(seed)
    opt = torch.optim.SGD(layer.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps = protocol.epochs * -(-len(train.labels) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"epoch": 0, "val_accuracy": -1.0, "state": copy.deepcopy(layer.state_dict())}
    history = []
    layer.train()
    for epoch in range(1, protocol.epochs + 1):
        order = torch.randperm(len(train.labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(layer(train.features[idx]), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        val_acc = accuracy(layer_logits(layer, val.features), val.labels)
        history.append({"epoch": epoch, "train_loss": total / max(len(order), 1), "val_accuracy": val_acc})
        if val_acc > best["val_accuracy"]:
            best = {"epoch": epoch, "val_accuracy": val_acc, "state": copy.deepcopy(layer.state_dict())}
    layer.load_state_dict(best["state"])
    layer.eval()
    return {"best_epoch": best["epoch"], "history": history}


def retrain(model: nn.Module, mask: torch.Tensor, bundle, protocol: RetrainProtocol,
            features: dict[str, FinalFeatures], seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with its final layer decomposed by ``mask``, retrained by ``protocol``; ``model`` is
    left unchanged.  ``features``: the original model's cached ``train`` / ``val`` final-layer inputs."""
    net = copy.deepcopy(model)
    name, linear = final_linear(net)
    layer = DecomposedLinear(linear, mask)
    replace_module(net, name, layer)
    if protocol.epochs == 0:
        return net.eval(), {"best_epoch": 0, "history": []}
    if protocol.parameters == "layer":
        return net.eval(), retrain_layer(layer, features["train"], features["val"], protocol, seed)
    info = fit(net, bundle.train, bundle.val, bundle.num_classes, protocol.train_config(seed), desc="retrain")
    return net, {"best_epoch": info["best_epoch"], "history": info["history"]}


@dataclass
class Decomposition:
    """Everything :func:`decompose_model` found: the summary, the masks and the (retrained) decomposed network."""

    summary: dict[str, Any]
    mask: torch.Tensor  # (n, m) bool, J_c per class
    histogram: torch.Tensor  # (n, m) counts
    model: nn.Module  # a copy of the network, its final layer a DecomposedLinear (retrained when epochs > 0)


def decompose_model(model: nn.Module, bundle, k1: Count | None = None, k2: Count | None = None,
                    protocol: RetrainProtocol | None = None, control: bool = False, min_r_a: float = 0.95,
                    grid: tuple[int, ...] = K_GRID, seed: int = 0, noise_repeats: int = 5) -> Decomposition:
    """Algorithm 1 on the training split; k₁ / k₂ not given are chosen on val (:func:`choose_k`); then on test
    (and val) A_f, A_d, r_A and the agreement of predictions; retraining by ``protocol`` (default
    :class:`RetrainProtocol`), with ``control`` also the full network retrained the same way; Table 8
    essentiality on test; the final-layer cost.  ``bundle`` is a :class:`~modeldoctor.data.bundle.DataBundle`;
    ``model`` is left unchanged."""
    protocol = protocol or RetrainProtocol()
    name, linear = final_linear(model)
    feats = {s: final_features(model, bundle.split(s)) for s in ("train", "val", "test")}
    width = linear.in_features
    k1s = sorted({k for k in grid if k < width} | ({k1} if k1 is not None else set()))
    k2s = sorted({k for k in grid if k <= width} | ({k2} if k2 is not None else set()))
    curve = k_curve(linear, feats["train"], feats["val"], k1s, k2s)
    choice = choose_k(curve, k1, k2, min_r_a)
    hist = class_histogram(instance_top_features(feats["train"].features, choice["k1"]), feats["train"].labels,
                           bundle.num_classes)
    mask = influential_features(hist, choice["k2"])
    layer = DecomposedLinear(linear, mask)
    splits: dict[str, dict[str, Any]] = {}
    for s in ("val", "test"):
        dec_logits = layer_logits(layer, feats[s].features)
        full, dec = accuracy(feats[s].logits, feats[s].labels), accuracy(dec_logits, feats[s].labels)
        splits[s] = {"accuracy_full": full, "accuracy_decomposed": dec, "r_A": relative_accuracy(dec, full),
                     "agreement": agreement(dec_logits, feats[s].logits), "accuracy_retrained": None,
                     "accuracy_control": None}
    net, retrain_info = retrain(model, mask, bundle, protocol, feats, seed)
    if protocol.epochs > 0:
        ctl = retrain(model, torch.ones_like(mask), bundle, protocol, feats, seed)[0] if control else None
        for s in ("val", "test"):
            splits[s]["accuracy_retrained"] = evaluate(net, bundle.split(s), bundle.num_classes)["accuracy"]
            if ctl is not None:
                splits[s]["accuracy_control"] = evaluate(ctl, bundle.split(s), bundle.num_classes)["accuracy"]
    train_f = feats["train"].features
    noise = essentiality(linear, feats["test"], mask, train_f.mean(0), train_f.std(0), noise_repeats, seed)
    summary = {"layer": name, "k1": choice["k1"], "k2": choice["k2"], "features": width,
               "classes": int(mask.shape[0]), **splits["test"], "val": splits["val"],
               "selection": {**choice, "min_r_a": min_r_a, "grid": list(grid), "split": "val", "curve": curve},
               "protocol": protocol.to_dict(), "retrain": retrain_info if protocol.epochs > 0 else None,
               "essentiality": noise, "multiply_adds": multiply_adds(mask), "influential": per_class_indices(mask)}
    return Decomposition(summary, mask, hist, net)
