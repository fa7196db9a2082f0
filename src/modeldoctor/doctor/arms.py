"""The treated fine-tune and its matched control, run side by side and measured the same way.

Both arms start from the same weights and share data order, annotated-image mixing, optimiser, schedule,
epochs, seed and checkpoint rule; only the loss differs (Eq. 7 vs cross-entropy alone).  A quarter of the
annotated images (``TreatConfig.holdout_annotated``) never enters training: pasted onto other classes'
backgrounds they form the background-swap split (:mod:`modeldoctor.data.swap`), a shortcut meter that needs
no decorrelated data.  The checkpoint is chosen on it (``select="swap"``), on validation, or is the last.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeldoctor.data.bundle import DataBundle, ImageSplit
from modeldoctor.data.swap import background_swap
from modeldoctor.doctor.annotation import MaskBank, batch_mixer, holdout_split
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, control_config
from modeldoctor.training import TrainConfig, evaluate, fit

Arm = tuple[nn.Module, dict[str, Any]]


def split_metrics(model: nn.Module, val: ImageSplit, test: ImageSplit, num_classes: int,
                  swap: ImageSplit | None = None) -> dict[str, Any]:
    """``{"val": {"accuracy", "per_class"}, "test": {...}, "swap": {...}}`` — the report's M."""
    out = {}
    for name, split in (("val", val), ("test", test), ("swap", swap)):
        if split is not None:
            m = evaluate(model, split, num_classes)
            out[name] = {"accuracy": m["accuracy"], "per_class": m["per_class"]}
    return out


def weight_change(model: nn.Module, start: nn.Module) -> dict[str, float]:
    """Per layer with weights (conv, linear, norm): ‖W − W₀‖ / ‖W₀‖ of ``model`` relative to ``start``."""
    before = dict(start.named_modules())
    change = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and name in before:
            w0 = before[name].weight.detach()
            change[name] = float((weight.detach() - w0).norm() / w0.norm().clamp_min(1e-12))
    return change


def swap_split(data: DataBundle, bank: MaskBank, held: list[int], seed: int) -> ImageSplit | None:
    if not held:
        return None
    return background_swap(data.train, bank.by_index(), held, bank.pool, seed=seed)


def treat_and_control(model: nn.Module, data: DataBundle, cfg: TreatConfig, train_cfg: TrainConfig,
                      relevant: dict[str, torch.Tensor] | None, bank: MaskBank | None, control: bool = True,
                      state_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune copies of ``model``: ``"treated"`` with ``cfg``'s constraints and ``"control"`` without.

    Returns ``{"treated": (model, M), "control": (model, M) | absent, "original": M, "lambdas": {...},
    "weight_change": {arm: {layer: ratio}}, "annotated": [...], "held_out": [...], "select": rule}``;
    ``model`` itself is left unchanged.  With ``state_dir`` each arm's training state is saved per epoch.
    """
    held: list[int] = []
    train_bank: MaskBank | None = bank
    if bank is not None and cfg.holdout_annotated > 0:
        used, held = holdout_split(bank.pool, data.train.labels, cfg.holdout_annotated, train_cfg.seed)
        train_bank = bank.restricted(used)
    swap = swap_split(data, bank, held, train_cfg.seed) if bank is not None else None
    select = cfg.select if (cfg.select != "swap" or swap is not None) else "val"
    chooser = swap if select == "swap" and swap is not None else data.val
    mixer = batch_mixer(data.train, train_bank.pool, cfg.mix_annotated, train_cfg.seed) if train_bank else None
    input_shape = (data.in_channels, data.input_size, data.input_size)
    suffix = "" if train_cfg.seed == 0 else f"-seed{train_cfg.seed}"
    out: dict[str, Any] = {"original": split_metrics(model, data.val, data.test, data.num_classes, swap),
                           "select": select, "weight_change": {}, "lambdas": {},
                           "annotated": [data.train.ids[i] for i in (train_bank.pool if train_bank else [])],
                           "held_out": [data.train.ids[i] for i in held]}
    for arm in (["control"] if control else []) + ["treated"]:
        tuned = copy.deepcopy(model)
        arm_cfg = cfg if arm == "treated" else control_config(cfg)
        with TreatmentLoss(tuned, arm_cfg, input_shape, relevant, train_bank, mixer) as loss_fn:
            if train_bank is not None and train_bank.pool:
                pool = train_bank.pool[:64]
                x = torch.stack([data.train[i][0] for i in pool])
                loss_fn.calibrate(x, data.train.labels[pool], train_bank.lookup(torch.tensor(pool))[0])
            state = None if state_dir is None else Path(state_dir) / f".state-{arm}{suffix}.pt"
            fit(tuned, data.train, chooser, data.num_classes, train_cfg, loss_fn=loss_fn, state_path=state,
                resume=resume, desc=f"{arm} seed {train_cfg.seed}", keep="last" if select == "last" else "best")
        out[arm] = (tuned, split_metrics(tuned, data.val, data.test, data.num_classes, swap))
        out["weight_change"][arm] = weight_change(tuned, model)
        if arm == "treated":
            out["lambdas"] = {k: v for k, v in loss_fn.lambdas.items()}
    return out


def mean_std(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of several M (one per seed), with their standard deviations under ``"std"`` (0 for one run)."""
    def stats(key: str, split: str) -> tuple[Any, Any]:
        values = torch.tensor([r[split][key] for r in runs], dtype=torch.float64)
        std = values.std(0, unbiased=True) if len(runs) > 1 else torch.zeros_like(values[0])
        return values.mean(0).tolist(), std.tolist()

    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for split in ("val", "test", "swap"):
        if all(split in r for r in runs):
            mean[split], std[split] = {}, {}
            for key in ("accuracy", "per_class"):
                mean[split][key], std[split][key] = stats(key, split)
    return {**mean, "std": std, "seeds": len(runs)}
