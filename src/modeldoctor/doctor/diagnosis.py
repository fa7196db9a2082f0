"""The diagnosing stage (Eq. 3–4): how strongly each class depends on each kernel of each chosen layer.

For layer r, class n and kernel k, over the T most confident correctly classified training samples of n:

    ā_k^{n,r} = mean over samples of (1/J) Σ_j Σ_{h,w} |∂ŷ_n / ∂(m_k^r + σ^j)|,   σ^j ~ U(−δ, δ) elementwise

A :class:`Diagnosis` keeps per-class sums and counts (not means), so partial results merge exactly, and a
few single-sample profiles per class (supp. Fig. 7).  δ is relative by default: δ = delta × RMS(m^r), the
layer's activation RMS over the whole data, because activation scales differ by orders of magnitude
between layers and models, and a fixed δ would be negligible for one layer and overwhelming for another.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modeldoctor.core import distributed
from modeldoctor.core.device import model_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerRef, all_layers, layer_depth, resolve_layers, sample_shape, train_mode
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.bundle import batch_loader
from modeldoctor.doctor.relevance import DEFAULT_METHOD, DEFAULT_PARAMS, relevant_kernels
from modeldoctor.doctor.selection import (
    SampleScores,
    Target,
    as_dataset,
    most_confident,
    ranking_confidence,
    sample_ids,
    score_samples,
)
from modeldoctor.models.checkpoint import weights_hash

logger = logging.getLogger(__name__)

Reduce = Literal["abs", "relu"]


@dataclass(frozen=True)
class DiagnosisOptions:
    """Everything that changes ā; two diagnoses merge only when these are equal."""

    noise_draws: int = 10
    samples_per_class: int = 100
    delta: float = 0.1
    delta_mode: Literal["relative", "absolute"] = "relative"
    output: Literal["logit", "prob"] = "logit"
    target: Target = "predicted"
    reduce: Reduce = "abs"
    min_confidence: float | None = None
    require_correct: bool = True
    seed: int = 0
    profiles_per_class: int = 3

    def validate(self) -> None:
        checks = [(self.noise_draws >= 1, "--noise-draws must be ≥ 1"),
                  (self.samples_per_class >= 1, "--samples-per-class must be ≥ 1"),
                  (self.delta >= 0, "--delta must be ≥ 0"),
                  (self.delta_mode in ("relative", "absolute"), "--delta-mode must be relative or absolute"),
                  (self.output in ("logit", "prob"), "--output must be logit or prob"),
                  (self.target in ("predicted", "label"), "--target must be predicted or label"),
                  (self.reduce in ("abs", "relu"), "--reduce must be abs or relu"),
                  (self.profiles_per_class >= 0, "profiles_per_class must be ≥ 0")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class LayerDiagnosis:
    """One layer's accumulators: ``sums[n, k]`` = Σ over class-n samples of the per-sample Eq. 4 value."""

    name: str
    depth: int  # core/layers.layer_depth: index among the Conv2d layers (transformers: among candidate layers), or −1
    shape: tuple[int, ...]  # (channels, height, width) of the feature map
    scale: float  # RMS of the layer's activation over the scored data
    delta: float  # the absolute noise range used
    sums: torch.Tensor  # float64 [num_classes, channels]
    counts: torch.Tensor  # int64 [num_classes]
    profiles: torch.Tensor  # float32 [num_classes, P, channels]: single-sample values, NaN where missing

    @property
    def channels(self) -> int:
        return int(self.shape[0])

    @property
    def correlation(self) -> torch.Tensor:
        """ā [num_classes, channels] (Eq. 4 averaged over the class's samples); zero rows for empty classes."""
        return (self.sums / self.counts.clamp_min(1).unsqueeze(1).double()).float()


@dataclass
class Diagnosis:
    """ā for every chosen layer, with the options, classes and weights hash it was computed with."""

    layers: dict[str, LayerDiagnosis]
    class_names: list[str]
    options: DiagnosisOptions
    weights_sha256: str
    input_shape: tuple[int, ...]
    profile_index: torch.Tensor  # int64 [num_classes, P]: dataset index of each kept profile, −1 if none
    profile_confidence: torch.Tensor  # float32 [num_classes, P]
    profile_ids: list[list[str]] = field(default_factory=list)  # [num_classes][P], "" where none
    model_spec: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def layer(self, name: str) -> LayerDiagnosis:
        if name not in self.layers:
            raise UserError(f"the diagnosis has no layer {name!r}; it has {', '.join(self.layers)}")
        return self.layers[name]

    def correlation(self, layer: str) -> torch.Tensor:
        return self.layer(layer).correlation

    def relevant(self, layer: str, method: str = DEFAULT_METHOD, **params: Any) -> torch.Tensor:
        """Bool [num_classes, channels]: relevant kernels per class (see :mod:`modeldoctor.doctor.relevance`)."""
        return relevant_kernels(self.correlation(layer), method, **params)

    def merge(self, other: Diagnosis) -> Diagnosis:
        """Sum two partial diagnoses of the same model with the same options (e.g. two halves of the data)."""
        differences = _differences(self, other)
        if differences:
            raise UserError(f"cannot merge diagnoses that differ in {'; '.join(differences)}")
        P = self.options.profiles_per_class
        conf = torch.cat([self.profile_confidence, other.profile_confidence], 1)
        index = torch.cat([self.profile_index, other.profile_index], 1)
        ids = [a + b for a, b in zip(self.profile_ids, other.profile_ids)]
        ranked = torch.where(index >= 0, conf, float("-inf")).argsort(dim=1, descending=True, stable=True)[:, :P]
        layers = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            profiles = torch.cat([a.profiles, b.profiles], 1)
            layers[name] = replace(a, sums=a.sums + b.sums, counts=a.counts + b.counts,
                                   profiles=profiles.gather(1, ranked.unsqueeze(2).expand(-1, -1, a.channels)))
        keep_ids = [[ids[c][int(j)] for j in ranked[c]] for c in range(len(ids))]
        timings = {k: self.timings.get(k, 0.0) + other.timings.get(k, 0.0) for k in {**self.timings, **other.timings}}
        return replace(self, layers=layers, profile_index=index.gather(1, ranked),
                       profile_confidence=conf.gather(1, ranked),
                       profile_ids=keep_ids, timings=timings)

    def default_relevance(self) -> dict[str, Any]:
        return {"method": DEFAULT_METHOD, **DEFAULT_PARAMS[DEFAULT_METHOD]}


def correlation_index(grads: torch.Tensor, reduce: Reduce = "abs") -> torch.Tensor:
    """Eq. 3–4 per sample: (1/J) Σ_j Σ_{h,w} |∂ŷ_n/∂(m_k + σ^j)| from grads (J, B, C, H, W) → (B, C).

    ``reduce="relu"`` keeps only positive derivatives, as the authors' public code does.
    """
    magnitude = grads.abs() if reduce == "abs" else grads.clamp_min(0)
    return magnitude.sum(dim=(3, 4)).mean(0)


def sample_seeds(index: torch.Tensor, seed: int, layer: str) -> torch.Tensor:
    """One noise seed per (sample, layer, seed): the noise a sample gets never depends on its batch."""
    base = zlib.crc32(f"{seed}:{layer}".encode())
    return torch.tensor([(int(i) * 0x9E3779B97F4A7C15 + base) % (2**63 - 1) for i in index.tolist()], dtype=torch.long)


def diagnose(model: nn.Module, data: Dataset | DataLoader, layers: LayerRef | Sequence[LayerRef] | str | None = None,
             noise_draws: int = 10, samples_per_class: int = 100, delta: float = 0.1,
             delta_mode: Literal["relative", "absolute"] = "relative", output: Literal["logit", "prob"] = "logit",
             target: Target = "predicted", reduce: Reduce = "abs", min_confidence: float | None = None,
             require_correct: bool = True, seed: int = 0, profiles_per_class: int = 3, batch_size: int = 128,
             class_names: Sequence[str] | None = None, scores: SampleScores | None = None,
             model_spec: str | None = None, force_fallback: bool = False, progress: bool = False,
             options: DiagnosisOptions | None = None) -> Diagnosis:
    """Eq. 3–4 for every layer in ``layers`` (default: :func:`~modeldoctor.core.layers.default_layer`; ``"all"``:
    :func:`~modeldoctor.core.layers.all_layers`, every Conv2d and, in transformers, every token block and norm).

    ``options``: a :class:`DiagnosisOptions` configured once (e.g. shared by several calls or read back from a
    saved diagnosis); when given, the individual option arguments (``noise_draws`` … ``profiles_per_class``) must
    stay at their defaults, so that no option is silently ignored.

    One scoring pass picks the T = ``samples_per_class`` most confident correct samples per class and
    measures each layer's activation RMS; then each batch of chosen samples runs one forward pass and,
    per layer, one batched replay of the network after that layer for all J noise draws.
    The model's mode is restored afterwards; its parameters and hooks are left untouched.
    """
    keywords = DiagnosisOptions(noise_draws, samples_per_class, delta, delta_mode, output, target, reduce,
                                min_confidence, require_correct, seed, profiles_per_class)
    if options is not None and keywords != DiagnosisOptions():
        raise UserError("diagnose got options= and individual option arguments; put every option in the options object")
    opts = options or keywords
    opts.validate()
    dataset, batch_size = as_dataset(data, batch_size)
    names = all_layers(model, sample_shape(dataset)) if layers == "all" else resolve_layers(model, layers,
                                                                                           sample_shape(dataset))
    with train_mode(model, False):
        replay = NoiseReplay(model, names, force_fallback=force_fallback)
        started = time.perf_counter()
        scores = scores if scores is not None and set(replay.layers) <= set(scores.feature_rms) \
            else score_samples(replay, data, batch_size)
        timings = {"selection": time.perf_counter() - started}
        chosen = most_confident(scores, opts.samples_per_class, opts.target, opts.min_confidence, opts.require_correct)
        diagnosis = _empty(model, replay.layers, scores, opts, class_names, model_spec)
        _accumulate(replay, dataset, scores, chosen, diagnosis, batch_size, timings, progress)
        diagnosis.timings = timings
        diagnosis.fallback_reason = replay.fallback_reason
        return diagnosis


def _empty(model: nn.Module, layers: list[str], scores: SampleScores, opts: DiagnosisOptions,
           class_names: Sequence[str] | None, model_spec: str | None) -> Diagnosis:
    N, P = scores.num_classes, opts.profiles_per_class
    names = list(class_names) if class_names is not None else [str(c) for c in range(N)]
    if len(names) != N:
        raise UserError(f"{len(names)} class names given but the model outputs {N} classes; pass one name per class")
    per_layer = {}
    for name in layers:
        shape = scores.feature_shapes[name]
        scale = scores.feature_rms[name]
        abs_delta = opts.delta * scale if opts.delta_mode == "relative" else opts.delta
        per_layer[name] = LayerDiagnosis(name, layer_depth(model, name), shape, scale, abs_delta,
                                         torch.zeros(N, shape[0], dtype=torch.float64),
                                         torch.zeros(N, dtype=torch.long),
                                         torch.full((N, P, shape[0]), float("nan")))
    return Diagnosis(per_layer, names, opts, weights_hash(model), scores.input_shape,
                     torch.full((N, P), -1, dtype=torch.long), torch.full((N, P), float("nan")),
                     [[""] * P for _ in range(N)], model_spec)


def _accumulate(replay: NoiseReplay, dataset: Dataset, scores: SampleScores, chosen: dict[int, torch.Tensor],
                diagnosis: Diagnosis, batch_size: int, timings: dict[str, float], progress: bool) -> None:
    """The correlation pass: one forward per batch, one tail replay per layer, sums added per class.

    Under torchrun each rank runs every ``world``-th batch of the (global) chosen samples, with the same batch
    boundaries as one process, and the float64 sums, counts and profiles are all-reduced at the end."""
    opts = diagnosis.options
    confidence = ranking_confidence(scores, opts.target)
    order = [(c, row, rank) for c, rows in chosen.items() for rank, row in enumerate(rows.tolist())]
    ids = sample_ids(dataset, [int(scores.position[row]) for _, row, _ in order])
    for step in ("load", "forward", "reduce", *(f"replay:{n}" for n in replay.layers)):
        timings.setdefault(step, 0.0)
    starts = list(range(0, len(order), batch_size))
    for start in starts:  # which samples keep a profile: known on every rank without computing
        for k, (c, row, rank) in enumerate(order[start:start + batch_size]):
            if rank < opts.profiles_per_class:
                diagnosis.profile_index[c, rank] = scores.index[row]
                diagnosis.profile_confidence[c, rank] = confidence[row]
                diagnosis.profile_ids[c][rank] = ids[start + k]
    mine = distributed.shard(starts)
    positions = [[int(scores.position[row]) for _, row, _ in order[s:s + batch_size]] for s in mine]
    device = model_device(replay.model)
    t0 = time.perf_counter()
    for start, batch in zip(mine, batch_loader(dataset, positions)):
        part = order[start:start + batch_size]
        rows = torch.tensor([row for _, row, _ in part])
        cls = torch.tensor([c for c, _, _ in part])
        index = scores.index[rows]
        t1 = time.perf_counter()
        with torch.no_grad():
            state = replay.forward(batch[0].to(device))
        timings["load"] += t1 - t0
        timings["forward"] += time.perf_counter() - t1
        for name, layer in diagnosis.layers.items():
            t2 = time.perf_counter()
            result = replay.gradients(state, name, [cls.to(device)], noise_draws=opts.noise_draws, delta=layer.delta,
                                      output=opts.output, sample_seeds=sample_seeds(index, opts.seed, name))
            t3 = time.perf_counter()
            per_sample = correlation_index(result.grads[0], opts.reduce).cpu()
            layer.sums.index_add_(0, cls, per_sample.double())
            layer.counts += torch.bincount(cls, minlength=diagnosis.num_classes)
            for k, (c, _, rank) in enumerate(part):
                if rank < opts.profiles_per_class:
                    layer.profiles[c, rank] = per_sample[k]
            timings[f"replay:{name}"] += t3 - t2
            timings["reduce"] += time.perf_counter() - t3
        if progress:
            logger.info("%d/%d samples diagnosed", min(start + batch_size, len(order)), len(order))
        t0 = time.perf_counter()
    if distributed.active():
        _all_reduce(diagnosis)


def _all_reduce(diagnosis: Diagnosis) -> None:
    """Sum every rank's share: sums and counts (float64 / int64), and the profiles each rank filled (exact)."""
    kept = diagnosis.profile_index.unsqueeze(2) >= 0
    for layer in diagnosis.layers.values():
        layer.sums = distributed.all_reduce(layer.sums)
        layer.counts = distributed.all_reduce(layer.counts)
        filled = distributed.all_reduce(torch.nan_to_num(layer.profiles, nan=0.0))
        layer.profiles = torch.where(kept, filled, torch.full_like(filled, float("nan")))


def _differences(a: Diagnosis, b: Diagnosis) -> list[str]:
    found = []
    if a.options != b.options:
        da, db = asdict(a.options), asdict(b.options)
        found.append("options " + ", ".join(f"{k}: {da[k]} vs {db[k]}" for k in da if da[k] != db[k]))
    if a.class_names != b.class_names:
        found.append(f"classes {a.class_names} vs {b.class_names}")
    if list(a.layers) != list(b.layers):
        found.append(f"layers {list(a.layers)} vs {list(b.layers)}")
    if a.weights_sha256 != b.weights_sha256:
        found.append("model weights (different weights hash)")
    for name in set(a.layers) & set(b.layers):
        if a.layers[name].delta != b.layers[name].delta:
            found.append(f"noise range at {name} ({a.layers[name].delta:g} vs {b.layers[name].delta:g}; "
                         "compute both with the same scores=)")
    return found
