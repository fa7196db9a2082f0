"""Treatment (Eq. 7): fine-tune a trained classifier with the space-wise and channel-wise constraints.

``L_all = L_orig + λ_sp Σ_{r∈S_sp} L_sp^r + λ_ch Σ_{r∈S_ch} L_ch^r``; defaults per the supplement: S_sp = the
last two conv layers, S_ch = the last one.  Every constraint term comes from one clean training forward
(BatchNorm in training mode, as for L_orig) plus J batched noisy replays of the tail after each layer
(:class:`modeldoctor.core.replay.NoiseReplay`), whose modules run in eval mode: BatchNorm uses its running
statistics, so the J noisy copies neither mix through batch statistics nor move the running buffers.
The noise range δ is relative: ``σ ~ U(−δ·rms(m^r), δ·rms(m^r))``, rms over the (detached) batch.

When fewer than half of a batch's images carry masks, the space-wise (and input-gradient) terms are taken on
a separate eval-mode pass over only those images, so their J replays cost a few images, not the batch.

The control is the same fine-tune with ``L_all = L_orig``: same weights, data order, extra annotated images
per batch, optimiser, schedule, epochs and seed.  Both pick their epoch on the validation split.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.input_gradients import log_prob_input_gradient, squared_gradient_norm
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.bundle import DataBundle, ImageSplit
from modeldoctor.data.masks import background_mask, expand_mask, stack_masks
from modeldoctor.doctor.constraints import channel_constraint, competitor_classes, first_classes, spatial_constraint
from modeldoctor.training import LossFn, TrainConfig, fit, predict

CONSTRAINTS = ("space", "channel", "input-gradient")


@dataclass
class TreatConfig:
    """What to constrain and how.  Paper defaults except ``form="share"`` (scale-free, see constraints.py) and
    ``first="label"`` (the ground truth rather than the predicted class); neither was tuned on validation."""

    constraints: tuple[str, ...] = ("space", "channel")
    space_layers: list[str] | None = None  # default: the last two conv layers
    channel_layers: list[str] | None = None  # default: the last conv layer
    lam_space: float = 1.0
    lam_channel: float = 1.0
    lam_input_gradient: float = 1.0
    noise_draws: int = 10  # J
    delta: float = 0.1  # relative noise range: δ = delta · rms(m^r)
    form: str = "share"  # "paper" (raw sums) or "share" (scale-free)
    first: str = "label"  # class of the first term: ground truth or "pred"
    competitor: str = "runner_up"  # or "wrong_top1"
    competitor_kernels: bool = False  # restrict Eq. 5's second term to the competitor's relevant kernels
    expansion: int = 3  # object mask growth in input pixels before computing I_bg
    normalise: str = "annotated"  # space-wise / input-gradient average over annotated images ("batch": over all)
    mix_annotated: int = 0  # annotated images appended to every batch (treated and control alike)
    space_pass: str = "auto"  # masked terms on the batch's own pass, a separate eval pass of the annotated
    # rows ("subset"), or "auto": subset when fewer than half the rows are annotated

    def __post_init__(self) -> None:
        unknown = set(self.constraints) - set(CONSTRAINTS)
        if unknown:
            raise UserError(f"unknown constraint(s) {sorted(unknown)}; choose from {', '.join(CONSTRAINTS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskBank:
    """Object masks of the annotated training images, addressed by split index."""

    masks: torch.Tensor  # (N, H, W) bool, all-False where not annotated
    annotated: torch.Tensor  # (N,) bool
    pool: list[int] = field(default_factory=list)  # indices of annotated images

    @classmethod
    def build(cls, split: ImageSplit, masks: dict[str, torch.Tensor], chosen: Sequence[int], size: int) -> MaskBank:
        ids = [split.ids[i] for i in chosen]
        stacked, has = stack_masks(masks, ids, size)
        full = torch.zeros(len(split), size, size, dtype=torch.bool)
        annotated = torch.zeros(len(split), dtype=torch.bool)
        full[list(chosen)] = stacked
        annotated[list(chosen)] = has
        return cls(full, annotated, [int(i) for i in torch.nonzero(annotated).flatten()])

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.masks[index], self.annotated[index]


def default_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Supplement A: space-wise on the last two conv layers, channel-wise on the last one."""
    convs = conv_layer_names(model)
    if not convs:
        raise UserError("the model has no Conv2d layer to constrain; name layers with --space-layers/--channel-layers")
    return convs[-2:], convs[-1:]


def lowest_confidence(model: nn.Module, split: ImageSplit, candidates: Sequence[str], per_class: int | None,
                      num_classes: int) -> list[int]:
    """Split indices of the ``per_class`` lowest-confidence (probability of the true label) images per class among
    ``candidates`` (ids with masks); ``None`` keeps every candidate.  The paper annotated 20 per class."""
    index = sorted(split.index_of[sid] for sid in candidates if sid in split.index_of)
    if per_class is None:
        return index
    logits, labels = predict(model, split)
    conf = logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    chosen: list[int] = []
    for c in range(num_classes):
        rows = [i for i in index if int(labels[i]) == c]
        rows.sort(key=lambda i: (float(conf[i]), i))
        chosen += rows[:per_class]
    return sorted(chosen)


def batch_mixer(split: ImageSplit, pool: Sequence[int], per_batch: int, seed: int
                ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Append ``per_batch`` annotated images to every batch; the draw depends only on (seed, batch indices),
    so a resumed run and the control see exactly the same batches."""
    def mix(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if per_batch <= 0 or not pool:
            return x, y, idx
        key = zlib.crc32(idx.numpy().tobytes()) ^ seed
        picks = torch.randint(len(pool), (per_batch,), generator=torch.Generator().manual_seed(key))
        extra = [split[pool[int(p)]] for p in picks]
        return (torch.cat([x, torch.stack([e[0] for e in extra])]),
                torch.cat([y, torch.tensor([e[1] for e in extra])]),
                torch.cat([idx, torch.tensor([e[2] for e in extra])]))
    return mix


def _relative_delta(feature: torch.Tensor, delta: float) -> float:
    return float(delta * feature.detach().pow(2).mean().sqrt().clamp_min(1e-12))


def treatment_loss(model: nn.Module, cfg: TreatConfig, relevant: dict[str, torch.Tensor] | None = None,
                   bank: MaskBank | None = None, mixer: Callable | None = None,
                   log: dict[str, float] | None = None) -> LossFn:
    """A ``training.fit`` loss for Eq. 7 (or, with no constraints, the matched control's plain cross-entropy).

    ``relevant[layer]``: (num_classes, K) bool relevant-kernel masks from the diagnosis (channel-wise);
    ``bank``: masks of the annotated images (space-wise and input-gradient).  ``log`` accumulates the terms.
    """
    space_layers, channel_layers = default_layers(model)
    space_layers = cfg.space_layers or space_layers
    channel_layers = cfg.channel_layers or channel_layers
    use_space, use_channel = "space" in cfg.constraints, "channel" in cfg.constraints
    use_ig = "input-gradient" in cfg.constraints
    if (use_space or use_ig) and (bank is None or not bank.pool):
        raise UserError("the space-wise constraint needs masks; pass --masks builtin|DIR or --boxes FILE")
    if use_channel:
        missing = [name for name in channel_layers if relevant is None or name not in relevant]
        if missing:
            raise UserError(f"the diagnosis has no relevant kernels for {missing}; diagnose those layers first")
    wanted = set(space_layers if use_space else []) | set(channel_layers if use_channel else [])
    order = conv_layer_names(model)
    layers = [n for n in order if n in wanted] + sorted(wanted - set(order))
    replay = NoiseReplay(model, layers) if layers else None

    def record(name: str, value: torch.Tensor) -> None:
        if log is not None:
            log[name] = log.get(name, 0.0) + float(value.detach())

    def loss_fn(model_: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None):
        if mixer is not None and idx is not None:
            x, y, idx = mixer(x, y, idx)
        if bank is not None and idx is not None:
            masks, annotated = bank.lookup(idx)
        else:
            masks, annotated = None, torch.zeros(len(x), dtype=torch.bool)
        rows = torch.nonzero(annotated).flatten()
        masked = (use_space or use_ig) and len(rows) > 0
        subset = masked and (cfg.space_pass == "subset" or (cfg.space_pass == "auto" and 2 * len(rows) < len(x)))
        share = len(rows) / len(x) if cfg.normalise == "batch" else 1.0
        if use_ig and masked and not subset:
            grad, logits = log_prob_input_gradient(model_, x)
            loss = F.cross_entropy(logits, y) + cfg.lam_input_gradient * _ig_term(grad, masks, annotated, share)
            return loss, logits
        state = replay.forward(x) if replay is not None else None
        logits = state.logits if state is not None else select_logits(model_(x))
        loss = F.cross_entropy(logits, y)
        if use_channel or (use_space and masked and not subset):
            first = first_classes(logits, y, cfg.first)
            second, weight = competitor_classes(logits, y, first, cfg.competitor)
            for layer in layers:
                channel_here = use_channel and layer in channel_layers
                space_here = use_space and masked and not subset and layer in space_layers
                if not (channel_here or space_here):
                    continue
                feature = state.features[layer]
                g = replay.gradients(state, layer, [first, second] if channel_here else [first],
                                     noise_draws=cfg.noise_draws, delta=_relative_delta(feature, cfg.delta),
                                     output="logit", create_graph=True)
                if channel_here:
                    rel = relevant[layer].to(feature.device)
                    term = channel_constraint(g.grads[0], g.grads[1], ~rel[first], weight,
                                              rel[second] if cfg.competitor_kernels else None, cfg.form)
                    record(f"channel:{layer}", term)
                    loss = loss + cfg.lam_channel * term
                if space_here:
                    bg = background_mask(masks, feature.shape[-2:], cfg.expansion)
                    term = spatial_constraint(g.grads[0], bg, annotated, cfg.form) * share
                    record(f"space:{layer}", term)
                    loss = loss + cfg.lam_space * term
        if subset:
            loss = loss + subset_terms(model_, x[rows], y[rows], masks[rows], share)
        return loss, logits

    def _ig_term(grad: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor, share: float) -> torch.Tensor:
        background = (~expand_mask(masks, cfg.expansion)).unsqueeze(1) & annotated.view(-1, 1, 1, 1)
        term = squared_gradient_norm(grad, background) * len(grad) / annotated.sum().clamp_min(1) * share
        record("input_gradient", term)
        return term

    def subset_terms(model_: nn.Module, xa: torch.Tensor, ya: torch.Tensor, masks: torch.Tensor,
                     share: float) -> torch.Tensor:
        """Few annotated rows get their own clean pass in eval mode (BatchNorm running statistics, as in the
        replayed tail), so the masked terms cost J replays of those rows only, not of the whole batch."""
        total = torch.zeros(())
        everyone = torch.ones(len(xa), dtype=torch.bool)
        with train_mode(model_, False):
            if use_ig:
                grad, _ = log_prob_input_gradient(model_, xa)
                total = total + cfg.lam_input_gradient * _ig_term(grad, masks, everyone, share)
            if use_space:
                sub = replay.forward(xa)
                target = first_classes(sub.logits, ya, cfg.first)
                for layer in space_layers:
                    feature = sub.features[layer]
                    g = replay.gradients(sub, layer, [target], noise_draws=cfg.noise_draws,
                                         delta=_relative_delta(feature, cfg.delta), output="logit", create_graph=True)
                    bg = background_mask(masks, feature.shape[-2:], cfg.expansion)
                    term = spatial_constraint(g.grads[0], bg, form=cfg.form) * share
                    record(f"space:{layer}", term)
                    total = total + cfg.lam_space * term
        return total

    return loss_fn


def treat_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, x: torch.Tensor,
               y: torch.Tensor, idx: torch.Tensor | None) -> float:
    """One optimisation step of Eq. 7 (what ``fit`` does per batch), returning the loss."""
    model.train()
    loss, _ = loss_fn(model, x, y, idx)
    if not torch.isfinite(loss):
        raise UserError("the treatment loss is not finite; lower --lr or the constraint weights")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def finetune(model: nn.Module, train: ImageSplit, val: ImageSplit, num_classes: int, train_cfg: TrainConfig,
             loss_fn: LossFn, state_path: str | Path | None = None, resume: bool = False,
             desc: str = "treat") -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``model`` in place from its current weights (never a restart); best epoch on validation.

    ``loss_fn`` must have been built for this very model object (the replay shares its modules).
    """
    summary = fit(model, train, val, num_classes, train_cfg, loss_fn=loss_fn, state_path=state_path,
                  resume=resume, desc=desc)
    return model, summary


def control_config(cfg: TreatConfig) -> TreatConfig:
    """The matched control: the same fine-tune (batches, annotated-image mixing, optimiser) without constraints."""
    return TreatConfig(**{**cfg.to_dict(), "constraints": ()})


def treat_and_control(model: nn.Module, data: DataBundle, cfg: TreatConfig, train_cfg: TrainConfig,
                      relevant: dict[str, torch.Tensor] | None, bank: MaskBank | None, control: bool = True,
                      state_dir: str | Path | None = None, resume: bool = False
                      ) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Fine-tune copies of ``model``: ``"treated"`` with ``cfg``'s constraints and ``"control"`` without.

    Both arms share weights, data order, optimiser, epochs and seed (``train_cfg.seed``); each keeps its best
    validation epoch.  With ``state_dir`` each arm's training state is saved per epoch for ``resume``.
    Returns ``{arm: (model, {"val": M, "test": M})}``; ``model`` itself is left unchanged.
    """
    mixer = batch_mixer(data.train, bank.pool, cfg.mix_annotated, train_cfg.seed) if bank else None
    suffix = "" if train_cfg.seed == 0 else f"-seed{train_cfg.seed}"
    arms: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for arm in (["control"] if control else []) + ["treated"]:
        tuned = copy.deepcopy(model)
        loss_fn = treatment_loss(tuned, cfg if arm == "treated" else control_config(cfg), relevant, bank, mixer)
        state = None if state_dir is None else Path(state_dir) / f".state-{arm}{suffix}.pt"
        finetune(tuned, data.train, data.val, data.num_classes, train_cfg, loss_fn, state_path=state,
                 resume=resume, desc=f"{arm} seed {train_cfg.seed}")
        arms[arm] = (tuned, split_metrics(tuned, data.val, data.test, data.num_classes))
    return arms


def split_metrics(model: nn.Module, val: ImageSplit, test: ImageSplit, num_classes: int) -> dict[str, Any]:
    """``{"val": {"accuracy", "per_class"}, "test": {...}}`` — the report's M."""
    from modeldoctor.training import evaluate

    out = {}
    for name, split in (("val", val), ("test", test)):
        m = evaluate(model, split, num_classes)
        out[name] = {"accuracy": m["accuracy"], "per_class": m["per_class"]}
    return out


def mean_std(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of several M (one per seed), with their standard deviations under ``"std"`` (0 for one run)."""
    def stats(key: str, split: str) -> tuple[Any, Any]:
        values = torch.tensor([r[split][key] for r in runs], dtype=torch.float64)
        std = values.std(0, unbiased=True) if len(runs) > 1 else torch.zeros_like(values[0])
        return values.mean(0).tolist(), std.tolist()

    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for split in ("val", "test"):
        mean[split], std[split] = {}, {}
        for key in ("accuracy", "per_class"):
            mean[split][key], std[split][key] = stats(key, split)
    return {**mean, "std": std, "seeds": len(runs)}
