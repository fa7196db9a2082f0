"""The treated fine-tune and its matched control, run side by side and measured the same way.

Both arms start from the same weights and share data order, annotated-image mixing, optimiser, schedule,
epochs, seed and checkpoint rule; only the loss differs (Eq. 7 vs cross-entropy alone).  A quarter of the
annotated images (``TreatConfig.holdout_annotated``) never enters training, as object or as background: pasted
onto each other's backgrounds they form the background-swap splits (:mod:`modeldoctor.doctor.search`), a shortcut
meter that needs no decorrelated data.  The checkpoint is chosen on its ``select`` half (``select="swap"``), on
validation, or is the last; the ``verdict`` half judges the treated arm against the control.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle, ImageSplit
from modeldoctor.doctor.annotation import MaskBank, batch_mixer, holdout_split
from modeldoctor.doctor.counterfactual import Composer
from modeldoctor.doctor.last_layer import refit_head
from modeldoctor.doctor.search import FALLBACKS, Meter, candidate_config, choose, meter_splits, needs_fallback, verdict
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, control_config, paste_place
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
    """The report's swap composites for held-out images ``held`` (objects and backgrounds both held out)."""
    return meter_splits(data.train, bank, held, seed).report


def _fine_tune(model: nn.Module, data: DataBundle, cfg: TreatConfig, train_cfg: TrainConfig,
               relevant: dict[str, torch.Tensor] | None, bank: MaskBank | None, mixer: Any) -> TreatmentLoss:
    """The Eq. 7 loss of one arm, bound to ``model``, with every "auto" λ calibrated on the pool's first images."""
    input_shape = (data.in_channels, data.input_size, data.input_size)
    loss_fn = TreatmentLoss(model, cfg, input_shape, relevant, bank, mixer, split=data.train, seed=train_cfg.seed)
    if bank is not None and bank.pool:
        pool = bank.pool[:64]
        x = torch.stack([data.train[i][0] for i in pool])
        loss_fn.calibrate(x, data.train.labels[pool], bank.lookup(torch.tensor(pool))[0])
    return loss_fn


def _run(model: nn.Module, data: DataBundle, cfg: TreatConfig, train_cfg: TrainConfig,
         relevant: dict[str, torch.Tensor] | None, bank: MaskBank | None, mixer: Any, chooser: ImageSplit, keep: str,
         state: Path, resume: bool, stop_after: int | None = None) -> tuple[nn.Module, dict[str, Any], list[float]]:
    """One fine-tune of a copy of ``model`` with ``cfg``'s terms; returns it, the λ it used and its ``chooser``
    accuracy after each epoch so far.  ``stop_after`` ends it after that many epochs of its schedule
    (``resume=True`` on the same ``state`` continues it)."""
    tuned = copy.deepcopy(model)
    with _fine_tune(tuned, data, cfg, train_cfg, relevant, bank, mixer) as loss_fn:
        log = fit(tuned, data.train, chooser, data.num_classes, train_cfg, loss_fn=loss_fn, keep=keep,
                  state_path=state, resume=resume, desc=f"{state.stem.removeprefix('.state-')}", stop_after=stop_after)
        return tuned, dict(loss_fn.lambdas), [float(h["val_accuracy"]) for h in log["history"]]


def _last_layer(model: nn.Module, control: nn.Module | None, data: DataBundle, bank: MaskBank, chooser: ImageSplit,
                seed: int, place: str = "own") -> tuple[nn.Module, str, float]:
    """DFR re-fits the head on the features training left; here two trainings left features — the original
    model's and its control's fine-tune — so both heads are re-fit and the better on ``chooser`` swaps is kept.  A
    fine-tune that erodes a good model (a clean one) keeps the original's features; one that helps keeps its own, so
    the candidate never starts behind both.  Returns the kept re-fit, which start it came from, and its score."""
    composer = Composer(data.train, bank, place=place)
    starts = {"original": model, **({"control": control} if control is not None else {})}
    refits = {name: refit_head(m, composer, data.num_classes, seed=seed) for name, m in starts.items()}
    scores = {name: evaluate(m, chooser, data.num_classes)["accuracy"] for name, m in refits.items()}
    best = max(refits, key=lambda n: scores[n])
    return refits[best], best, scores[best]


def treat_and_control(model: nn.Module, data: DataBundle, cfg: TreatConfig, train_cfg: TrainConfig,
                      relevant: dict[str, torch.Tensor] | None, bank: MaskBank | None, control: bool = True,
                      state_dir: str | Path | None = None, resume: bool = False,
                      candidates: Sequence[str] | None = None, trial_epochs: int = 1,
                      fallback: bool = True) -> dict[str, Any]:
    """Fine-tune copies of ``model``: ``"treated"`` with ``cfg``'s constraints and ``"control"`` without.

    With ``candidates`` (names of :data:`modeldoctor.doctor.search.CANDIDATES`) the treated arm is the candidate
    with the best ``select`` swap accuracy (with more than two fine-tunes, each first runs ``trial_epochs`` of its
    own compressed schedule and the best reruns in full), and ``"verdict"`` says whether it beat the control on the
    ``verdict`` swaps.  ``"last-layer"`` re-fits the head of ``model`` and of the control's fine-tune and keeps the
    better on ``select`` swaps; a tie between candidates goes to the less invasive (``search.choose``).  With
    ``fallback``, a fine-tune candidate that does not beat every other on ``select`` swaps retries as its fallback
    (:data:`~modeldoctor.doctor.search.FALLBACKS`: the same term at a fifth of the lr), which then competes;
    with ``cfg.early_stop_margin`` such a fine-tune runs epoch by epoch and stops after epoch e of E once it trails
    the re-fit head on ``select`` swaps by more than the margin × (E − e) / E.
    Returns ``{"treated": (model, M), "control": (model, M) | absent, "original": M, "lambdas": {...},
    "weight_change": {arm: {layer: ratio}}, "annotated": [...], "held_out": [...], "select": rule,
    "candidates": [...] (a fine-tune's with its select-swap score after each epoch it ran), "chosen": name,
    "config": TreatConfig, "verdict": {...}}``; ``model`` is left unchanged.
    With ``state_dir`` each fine-tune's training state is saved per epoch (``resume=True`` continues).
    """
    held: list[int] = []
    train_bank: MaskBank | None = bank
    if bank is not None and cfg.holdout_annotated > 0:
        used, held = holdout_split(bank.pool, data.train.labels, cfg.holdout_annotated, train_cfg.seed)
        train_bank = bank.restricted(used)
    meter = Meter(None, None) if bank is None else meter_splits(data.train, bank, held, train_cfg.seed,
                                                                 paste_place(cfg.swap_paste_at))
    select = cfg.select if (cfg.select != "swap" or meter.select is not None) else "val"
    chooser = meter.select if select == "swap" and meter.select is not None else data.val
    mixer = batch_mixer(data.train, train_bank.pool, cfg.mix_annotated, train_cfg.seed) if train_bank else None
    suffix = "" if train_cfg.seed == 0 else f"-seed{train_cfg.seed}"
    keep = "last" if select == "last" else "best"
    scratch = tempfile.TemporaryDirectory(prefix="modeldoctor-treat-") if state_dir is None else None
    states = Path(state_dir if state_dir is not None else scratch.name)  # type: ignore[union-attr]

    def metrics(m: nn.Module) -> dict[str, Any]:
        return split_metrics(m, data.val, data.test, data.num_classes, meter.report)

    out: dict[str, Any] = {"original": metrics(model), "select": select, "weight_change": {}, "lambdas": {},
                           "annotated": [data.train.ids[i] for i in (train_bank.pool if train_bank else [])],
                           "held_out": [data.train.ids[i] for i in held], "candidates": []}
    started = time.time()
    try:
        if control:
            tuned, _, _ = _run(model, data, control_config(cfg), train_cfg, relevant, train_bank, mixer, chooser, keep,
                               states / f".state-control{suffix}.pt", resume)
            out["control"] = (tuned, metrics(tuned))
            out["weight_change"]["control"] = weight_change(tuned, model)
            out["seconds"] = {"control": time.time() - started}
        names = list(candidates) if candidates else [None]
        # More than two fine-tunes: each first runs a short trial (its own compressed schedule), the best reruns.
        trial = trial_epochs if sum(n != "last-layer" for n in names) > 2 else None
        runs: dict[str | None, tuple[nn.Module, TreatConfig, dict[str, Any]]] = {}
        scores: dict[str | None, float] = {}  # select-swap accuracy per candidate run

        def schedule(name: str | None, epochs: int) -> TrainConfig:
            lr_factor = candidate_config(name)[1] if name else 1.0
            return TrainConfig(**{**train_cfg.to_dict(), "lr": train_cfg.lr * lr_factor, "epochs": epochs})

        records: dict[str | None, dict[str, Any]] = {}

        def run_candidate(name: str | None, stop_after: int | None = None, carry_on: bool = False) -> None:
            """Run (or with ``carry_on``, continue a stopped) candidate and record its select-swap score."""
            changes = candidate_config(name)[0] if name else {}
            arm_cfg = TreatConfig(**{**cfg.to_dict(), **changes})
            clock = time.time()
            if name == "last-layer":
                if train_bank is None or not train_bank.pool:
                    return
                tuned, start, score = _last_layer(model, out["control"][0] if control else None, data, train_bank,
                                                  chooser, train_cfg.seed, paste_place(cfg.paste_at))
                lambdas: dict[str, Any] = {}
                detail: dict[str, Any] = {"head_of": start}
            else:
                run_cfg = schedule(name, trial or train_cfg.epochs)
                tag = f"{name or 'treated'}{'-trial' if trial else ''}"
                tuned, lambdas, per_epoch = _run(model, data, arm_cfg, run_cfg, relevant, train_bank, mixer, chooser,
                                                 keep, states / f".state-{tag}{suffix}.pt", resume or carry_on,
                                                 stop_after)
                detail = {"lr": run_cfg.lr, "select_swap_per_epoch": per_epoch,
                          **({"stopped_after": stop_after} if stop_after else {})}
                score = evaluate(tuned, chooser, data.num_classes)["accuracy"]
            runs[name], scores[name] = (tuned, arm_cfg, lambdas), score
            spent = records[name]["seconds"] if carry_on else 0.0
            records[name] = {"name": name or "+".join(cfg.constraints), "trial_epochs": trial, "select_swap": score,
                             "seconds": spent + time.time() - clock, **detail}

        # A fine-tune with a fallback runs epoch by epoch once the re-fit head is known; trailing it on select
        # swaps by more than the margin times the share of the schedule still to run, it stops (its fallback runs
        # below): the less schedule is left, the less it can still catch up.
        margin, epochs = cfg.early_stop_margin, train_cfg.epochs
        stages = margin is not None and fallback and trial is None and "last-layer" in names and epochs > 1
        staged = [n for n in names if n in FALLBACKS] if stages else []

        def trails(name: str | None, done: int) -> bool:
            left = (epochs - done) / epochs
            return "last-layer" in runs and scores[name] < scores["last-layer"] - (margin or 0.0) * left

        for name in names:
            run_candidate(name, stop_after=1 if name in staged else None)
        for name in staged:
            done = 1
            while done < epochs and not trails(name, done):
                done += 1
                run_candidate(name, stop_after=done if done < epochs else None, carry_on=True)
        if not runs:
            raise UserError("no treatment candidate could run; the last-layer re-fit needs annotated images")
        if fallback and trial is None:  # a fine-tune that did not beat every other candidate retries as its fallback
            for name in [n for n in runs if n is not None and needs_fallback(n, scores)]:
                run_candidate(FALLBACKS[name])
        out["candidates"] = list(records.values())
        best = choose(scores)
        tuned, arm_cfg, lambdas = runs[best]
        if trial is not None and best != "last-layer":
            tuned, lambdas, _ = _run(model, data, arm_cfg, schedule(best, train_cfg.epochs), relevant, train_bank,
                                     mixer, chooser, keep, states / f".state-{best}{suffix}.pt", resume)
        out["lambdas"] = lambdas
        out["treated"] = (tuned, metrics(tuned))
        out["weight_change"]["treated"] = weight_change(tuned, model)
        out["chosen"], out["config"] = best or "+".join(cfg.constraints), arm_cfg
        reference = out["control"][0] if control else model
        out["verdict"] = verdict(tuned, reference, meter, out["chosen"], "control" if control else "original",
                                 original=model if control else None)
        out.setdefault("seconds", {})["total"] = time.time() - started
    finally:
        if scratch is not None:
            scratch.cleanup()
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
