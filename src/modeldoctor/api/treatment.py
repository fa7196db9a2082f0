"""``treat``: the treated fine-tune *and* its matched control (Eq. 7), over one or several seeds, as
``modeldoctor treat`` and the demo run them; the ``treat.json`` document."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.masks import check_masks, default_expansion
from modeldoctor.data.refine import refine_masks
from modeldoctor.doctor.annotation import MaskBank, lowest_confidence
from modeldoctor.doctor.arms import mean_std, treat_and_control
from modeldoctor.doctor.diagnosis import Diagnosis
from modeldoctor.doctor.search import CANDIDATES, DEFAULT_CANDIDATES, check_candidates
from modeldoctor.doctor.shortcut import reads_background
from modeldoctor.doctor.treatment import MASKED, TreatConfig, control_config, default_layers
from modeldoctor.training import TrainConfig

logger = logging.getLogger(__name__)

ARMS = ("original", "control", "treated")


@dataclass
class Arm:
    """One fine-tuned model of a treatment run: ``"treated"`` or ``"control"``."""

    name: str
    model: nn.Module
    metrics: dict[str, Any]
    recipe: dict[str, Any]  # the fine-tune's TrainConfig plus ``"treatment"``: the TreatConfig it ran with


@dataclass
class TreatmentResult:
    """The treated model, its matched control, and their metrics ``M = {"val": …, "test": …, "swap": …}``."""

    treated: nn.Module
    control: nn.Module | None
    original: dict[str, Any]
    treated_metrics: dict[str, Any]
    control_metrics: dict[str, Any] | None
    config: TreatConfig
    train_config: TrainConfig
    annotated: list[str] = field(default_factory=list)  # ids of the training images whose masks trained
    held_out: list[str] = field(default_factory=list)  # ids of the annotated images kept for the swap test
    lambdas: dict[str, Any] = field(default_factory=dict)  # λ in use (auto-calibrated ones included)
    weight_change: dict[str, dict[str, float]] = field(default_factory=dict)  # arm → layer → ‖ΔW‖/‖W‖
    select: str = "val"  # the checkpoint rule actually used
    candidates: list[dict[str, Any]] = field(default_factory=list)  # each candidate's select-swap accuracy
    chosen: str = ""  # the candidate the treated arm ran
    verdict: dict[str, Any] = field(default_factory=dict)  # treated vs control on held-out swaps (doctor/search)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time: the control arm, the whole run

    def to_dict(self) -> dict[str, Any]:
        """The ``treat.json`` layout (less ``"checkpoint"``): ``{"original": M, "control": M, "treated": M, ...}``."""
        return {"original": self.original, "control": self.control_metrics, "treated": self.treated_metrics,
                "config": self.config.to_dict(), "train_config": self.train_config.to_dict(),
                "annotated": len(self.annotated), "held_out": len(self.held_out), "annotated_ids": self.annotated,
                "held_out_ids": self.held_out, "lambdas": self.lambdas,
                "select": self.select, "weight_change": self.weight_change, "candidates": self.candidates,
                "chosen": self.chosen, "verdict": self.verdict, "seconds": self.seconds}

    summary = to_dict  # the name the README's Python example uses

    def arms(self) -> list[Arm]:
        """The fine-tuned models with what their checkpoints record (the control's recipe has no constraints)."""
        found = [Arm("treated", self.treated, self.treated_metrics,
                     self.train_config.to_dict() | {"treatment": self.config.to_dict()})]
        if self.control is not None and self.control_metrics is not None:
            found.append(Arm("control", self.control, self.control_metrics,
                             self.train_config.to_dict() | {"treatment": control_config(self.config).to_dict()}))
        return found


def resolve_paste(cfg: TreatConfig, model: nn.Module, data: DataBundle, masks: Mapping[str, torch.Tensor],
                  per_class: int, seed: int) -> TreatConfig:
    """``cfg`` with every ``"auto"`` paste place resolved: ``"donor"`` when the shortcut check (on the training
    images with masks) finds ``model`` reading its background, else ``"own"`` — a model with nothing to repair, or
    with its cue on the object, keeps its objects where they were (benchmarks/paste_guard.py)."""
    try:
        reads = reads_background(model, data.train, masks, per_class, seed=seed)
    except UserError as error:  # too few usable masks to check: keep the objects where they were
        logger.info("paste place auto: no shortcut check (%s)", error)
        reads = False
    place = "donor" if reads else "own"
    logger.info("paste place auto: the shortcut check %s, so objects are pasted at %s place",
                "finds the model reading its background" if reads else "finds no background reading",
                "the donor's" if reads else "their own")
    return dataclasses.replace(cfg, paste_at=place if cfg.paste_at == "auto" else cfg.paste_at,
                               swap_paste_at=place if cfg.swap_paste_at == "auto" else cfg.swap_paste_at)


def treat(model: nn.Module, diagnosis: Diagnosis | None, data: DataBundle,
          masks: Mapping[str, torch.Tensor] | None = None, annotate_per_class: int | None = 20,
          constraints: Sequence[str] | str = "auto", epochs: int = 3, lr: float | None = None,
          batch_size: int | None = None, seed: int = 0, control: bool = True, train_config: TrainConfig | None = None,
          relevant: dict[str, torch.Tensor] | None = None, relevance: str | None = None,
          state_dir: str | Path | None = None, resume: bool = False, candidates: Sequence[str] | None = None,
          refine: bool = False, fallback: bool = True, **options: Any) -> TreatmentResult:
    """Eq. 7: fine-tune a copy of ``model`` with the constraints, and (``control=True``) a second copy without.

    ``masks``: object masks by training-sample id (default: ``data.masks``); the space-wise constraint uses those
    of the ``annotate_per_class`` lowest-confidence training images per class (``None``: every mask), less the
    held-out quarter that measures background-swap accuracy and chooses the checkpoint.  ``refine=True`` cuts each
    chosen mask (a box, typically) down to the object with GrabCut first (:func:`modeldoctor.data.refine.refine_masks`).
    ``constraints="auto"`` (default) tries ``candidates`` (default
    :data:`~modeldoctor.doctor.search.DEFAULT_CANDIDATES`) and keeps the best on held-out swaps, a tie going to the
    less invasive (``fallback``: a fine-tune that does not beat every other candidate is retried at a fifth of the
    lr, ``search.FALLBACKS``); a list of terms (``"space"``, ``"channel"``, ``"input-gradient"``,
    ``"counterfactual"``) runs exactly those.  ``verdict`` says whether the treated arm beat the control by more
    than its noise.
    ``diagnosis`` (or ``relevant``, per layer (num_classes, K) bool) supplies the relevant kernels of the
    channel-wise constraint (``relevance``: the diagnosis's relevance method; default its own).  ``options`` are
    :class:`~modeldoctor.doctor.treatment.TreatConfig` fields (``lam_space``, ``noise_draws``, ``select``, …).
    ``train_config``: the original optimiser settings (e.g. the checkpoint's); ``lr`` and ``batch_size`` default
    to its values (0.05 and 64 without one).  Both arms share weights, data order, optimiser, epochs, seed and
    checkpoint rule; ``state_dir`` saves their state every epoch so ``resume=True`` continues.
    """
    search = constraints == "auto"
    names = check_candidates(candidates or DEFAULT_CANDIDATES) if search else None
    terms = tuple(sorted({t for n in names or () for t in CANDIDATES[n].get("constraints", ())})) if search else (
        tuple(constraints))
    space_default, channel_default = default_layers(model, (data.in_channels, data.input_size, data.input_size))
    cfg = TreatConfig(**{"space_layers": space_default, "channel_layers": channel_default,
                         "expansion": default_expansion(data.input_size), **options, "constraints": terms})
    if "channel" in cfg.constraints and relevant is None:
        if diagnosis is None:
            raise UserError("the channel-wise constraint needs a diagnosis; pass diagnose(model, ...) or drop 'channel'")
        method = {"method": relevance} if relevance else {}
        relevant = {name: diagnosis.relevant(name, **method) for name in cfg.channel_layers or []}
    bank = None
    given = check_masks(masks if masks is not None else data.masks, data.input_size) if (
        masks or data.masks) else {}
    masked_ids = [sid for sid in data.train.ids if sid in given]
    if (search or set(MASKED) & set(cfg.constraints)) and not masked_ids:
        raise UserError("no object mask matches a training image id; pass masks={sample_id: bool HxW tensor}")
    if masked_ids:
        chosen = lowest_confidence(model, data.train, masked_ids, annotate_per_class, data.num_classes)
        if refine:
            given = refine_masks(data.train, {data.train.ids[i]: given[data.train.ids[i]] for i in chosen})
        bank = MaskBank.build(data.train, given, chosen, data.input_size)
    if bank is not None and "auto" in (cfg.paste_at, cfg.swap_paste_at):
        cfg = resolve_paste(cfg, model, data, given, annotate_per_class or 20, seed)
    base = train_config or TrainConfig(batch_size=64)
    run_cfg = TrainConfig(**{**base.to_dict(), "epochs": epochs, "lr": base.lr if lr is None else lr,
                             "batch_size": base.batch_size if batch_size is None else batch_size, "seed": seed})
    arms = treat_and_control(model, data, cfg, run_cfg, relevant, bank, control=control, state_dir=state_dir,
                             resume=resume, candidates=names, fallback=fallback)
    ctrl = arms.get("control")
    return TreatmentResult(arms["treated"][0], ctrl[0] if ctrl else None, arms["original"], arms["treated"][1],
                           ctrl[1] if ctrl else None, arms["config"], run_cfg, arms["annotated"], arms["held_out"],
                           arms["lambdas"], arms["weight_change"], arms["select"], arms["candidates"], arms["chosen"],
                           arms["verdict"], arms["seconds"])


def treat_seeds(model: nn.Module, diagnosis: Diagnosis | None, data: DataBundle, seeds: Sequence[int],
                on_result: Callable[[TreatmentResult], None] | None = None, **kwargs: Any) -> list[TreatmentResult]:
    """:func:`treat` once per seed (``kwargs``: its arguments); ``on_result`` sees each result as soon as it is
    done (e.g. to save its checkpoints before the next seed starts)."""
    results = []
    for seed in seeds:
        result = treat(model, diagnosis, data, seed=seed, **kwargs)
        for arm in result.arms():
            logger.info("%s seed %d: val %.4f test %.4f", arm.name, seed, arm.metrics["val"]["accuracy"],
                        arm.metrics["test"]["accuracy"])
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def treatment_document(results: Sequence[TreatmentResult], checkpoint: str) -> dict[str, Any]:
    """The ``treat.json`` document for one or several seeds (means with ``std`` over seeds when several)."""
    document = {"checkpoint": checkpoint, **results[0].to_dict()}
    if len(results) > 1:
        for arm in ARMS:
            runs = [getattr(r, f"{arm}_metrics" if arm != "original" else "original") for r in results]
            document[arm] = mean_std(runs) if all(r is not None for r in runs) else None
    return document
