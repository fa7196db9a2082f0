"""Discovery 2 of Model Doctor (Feng et al., AAAI 2022, Fig. 3): adversarial samples are isolated, normal
samples successive in feature space — and a detector built on it.

Protocol: FGSM adversarials (ε in raw [0, 1] pixels, :func:`modeldoctor.analyses.adversarial.fgsm`) of correctly
classified images; only successful ones (prediction flipped) are kept.  For every sample, noise
``σ ~ Uniform(−δ, δ)`` is added to a layer's feature map ``m^r`` (the layer's output) J = 10 times per δ; the
paper's δ is absolute (default grid 0 … 0.3), ``relative=True`` multiplies it by the layer's activation std
over the clean samples.  Per δ we report the normal samples' accuracy and the share of adversarial replays
that return to the true label or keep the false one (Fig. 3; shares over samples × draws).

Detector: ``score(x) = (1/J) Σ_j 1[argmax f(x; m^r + σ^j) ≠ argmax f(x)]``, the fraction of noisy replays
whose prediction changes.  Images are split in half (an image's clean and adversarial versions stay in the
same half); δ (and the layer, if several) is chosen by AUROC on the calibration half and the AUROC of
adversarial vs clean is reported on the held-out half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modeldoctor.analyses.adversarial import fgsm, pgd
from modeldoctor.core.device import model_device, to_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import FeatureCapture, resolve_layers, sample_shape, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.replay import NoiseReplay, draw_noise
from modeldoctor.data.bundle import ImageSplit, make_loader, unpack_batch

DEFAULT_DELTAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


@dataclass
class AdversarialSet:
    """Correctly classified images and their successful FGSM adversarials (all normalised like the model input)."""

    clean: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor  # (N,)
    adversarial: torch.Tensor  # (M, C, H, W)
    source: torch.Tensor  # (M,) index into ``clean`` of each adversarial's original
    false_labels: torch.Tensor  # (M,) the adversarial's (wrong) prediction
    eps: float
    attack: str = "fgsm"

    @property
    def success_rate(self) -> float:
        """Share of correctly classified images whose FGSM image is misclassified."""
        return len(self.source) / max(len(self.labels), 1)


def successful_adversarials(model: nn.Module, split: ImageSplit, eps: float, max_samples: int | None = None,
                            batch_size: int = 256, attack: str = "fgsm") -> AdversarialSet:
    """FGSM or PGD (``attack``, ``ε`` raw) on the first ``max_samples`` images of ``split``; keeps the correctly
    classified images and those adversarials that change the prediction.  Eval mode, restored afterwards."""
    if attack not in ("fgsm", "pgd"):
        raise UserError(f"unknown attack {attack!r}; choose fgsm or pgd")
    clean, labels, adv, source, false = [], [], [], [], []
    seen = kept = 0
    with train_mode(model, False):
        for batch in make_loader(split, batch_size):
            if max_samples is not None and seen >= max_samples:
                break
            x, y, _ = to_device(model_device(model), *unpack_batch(batch))
            if max_samples is not None:
                x, y = x[:max_samples - seen], y[:max_samples - seen]
            seen += len(y)
            with torch.no_grad():
                ok = select_logits(model(x)).argmax(1) == y
            x, y = x[ok], y[ok]
            if len(y) == 0:
                continue
            x_adv = (fgsm(model, x, y, eps, split.mean, split.std) if attack == "fgsm"
                     else pgd(model, x, y, eps, mean=split.mean, std=split.std, seed=seen))
            with torch.no_grad():
                pred = select_logits(model(x_adv)).argmax(1)
            flipped = pred != y
            clean.append(x)
            labels.append(y)
            adv.append(x_adv[flipped])
            false.append(pred[flipped])
            source.append(torch.nonzero(flipped).flatten() + kept)
            kept += len(y)
    if kept == 0:
        raise UserError("the model classifies none of the chosen images correctly; check the checkpoint and --data")
    return AdversarialSet(torch.cat(clean), torch.cat(labels), torch.cat(adv), torch.cat(source), torch.cat(false), eps,
                          attack)


@torch.no_grad()
def activation_std(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 256) -> dict[str, float]:
    """Standard deviation of each layer's output over all elements of ``images``' feature maps (eval mode)."""
    sums = {name: torch.zeros(3, dtype=torch.float64) for name in layers}
    with train_mode(model, False):
        for start in range(0, len(images), batch_size):
            with FeatureCapture(model, layers) as cap:
                model(images[start:start + batch_size])
            for name in layers:
                f = cap.captured[name].double()
                sums[name] += torch.stack([f.new_tensor(f.numel()), f.sum(), f.pow(2).sum()]).cpu()
    return {name: float(((s[2] - s[1] ** 2 / s[0]) / (s[0] - 1)).clamp_min(0).sqrt()) for name, s in sums.items()}


def noisy_logits(model: nn.Module, images: torch.Tensor, layers: Sequence[str], deltas: Sequence[float],
                 draws: int, scales: dict[str, float] | None = None, batch_size: int = 128,
                 seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(clean logits (N, K), {layer: logits (len(deltas), draws, N, K)})`` with ``Uniform(−δ·s, δ·s)`` noise
    added to that layer's output only (``s`` = ``scales[layer]``, default 1).

    One forward pass per batch, then the network after the layer is replayed ``draws`` times per δ > 0
    (:class:`modeldoctor.core.replay.NoiseReplay`; δ = 0 repeats the clean logits); the whole pass runs in eval
    mode, restored afterwards.
    """
    replay = NoiseReplay(model, list(layers))
    generator = torch.Generator().manual_seed(seed)
    clean: list[torch.Tensor] = []
    noisy: dict[str, list[torch.Tensor]] = {name: [] for name in replay.layers}
    with train_mode(model, False), torch.no_grad():
        for start in range(0, len(images), batch_size):
            state = replay.forward(images[start:start + batch_size])
            clean.append(state.logits.float())
            for name in replay.layers:
                feature = state.features[name]
                s = (scales or {}).get(name, 1.0)
                per_delta = []
                for d in deltas:
                    if d == 0:  # no noise: every replay equals the clean pass
                        per_delta.append(state.logits.float().expand(draws, *state.logits.shape))
                        continue
                    flat = (feature.unsqueeze(0) + draw_noise(feature, draws, d * s, generator)).flatten(0, 1)
                    logits = select_logits(replay.replay_tail(state, name, flat, draws)).float()
                    per_delta.append(logits.view(draws, len(feature), -1))
                noisy[name].append(torch.stack(per_delta))
    return torch.cat(clean), {name: torch.cat(p, dim=2) for name, p in noisy.items()}


def noisy_predictions(model: nn.Module, images: torch.Tensor, layers: Sequence[str], deltas: Sequence[float],
                      draws: int, scales: dict[str, float] | None = None, batch_size: int = 128,
                      seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`noisy_logits` as predictions: ``(clean (N,), {layer: (len(deltas), draws, N)})``."""
    clean, noisy = noisy_logits(model, images, layers, deltas, draws, scales, batch_size, seed)
    return clean.argmax(1), {name: z.argmax(-1) for name, z in noisy.items()}


def flip_score(predictions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Detector score: share of the J noisy predictions (…, J, N) that differ from the un-noised one (N,)."""
    return (predictions != reference).float().mean(-2)


def auroc(positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve = P(score⁺ > score⁻) + ½ P(score⁺ = score⁻), from scikit-learn; NaN without
    both kinds of sample."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn takes ~1.4 s to import, only this needs it

    return float(roc_auc_score(truth, np.concatenate([pos, neg])))


def halves(n: int, seed: int) -> torch.Tensor:
    """Boolean (n,): True for the calibration half of a seeded random permutation."""
    calibration = torch.zeros(n, dtype=torch.bool)
    calibration[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // 2]] = True
    return calibration


def discovery2(model: nn.Module, split: ImageSplit, eps: float = 0.1, layers: str | Sequence[str] | None = None,
               deltas: Sequence[float] = DEFAULT_DELTAS, draws: int = 10, relative: bool = False,
               max_samples: int | None = None, seed: int = 0, batch_size: int = 128) -> dict:
    """Fig. 3 curves and the noise-flip detector for each layer (default: the last conv layer); see module doc."""
    if draws < 1 or not deltas or any(d < 0 for d in deltas):
        raise UserError("need draws ≥ 1 and a non-empty list of δ ≥ 0; e.g. --deltas 0,0.1,0.2,0.3 --draws 10")
    names = resolve_layers(model, layers, sample_shape(split))
    data = successful_adversarials(model, split, eps, max_samples)
    if len(data.source) == 0:
        raise UserError(f"FGSM at ε={eps} fooled none of the {len(data.labels)} correct images; raise --eps")
    scales = activation_std(model, data.clean, names) if relative else {n: 1.0 for n in names}
    _, clean_noisy = noisy_predictions(model, data.clean, names, deltas, draws, scales, batch_size, seed)
    _, adv_noisy = noisy_predictions(model, data.adversarial, names, deltas, draws, scales, batch_size, seed + 1)
    calibration = halves(len(data.labels), seed)
    adv_calibration = calibration[data.source]
    true_of_adv = data.labels[data.source]
    curves: dict[str, dict[str, Any]] = {}
    choices: list[tuple[float, int, int, str]] = []
    for name in names:
        s_clean = flip_score(clean_noisy[name], data.labels)
        s_adv = flip_score(adv_noisy[name], data.false_labels)
        keep_false = (adv_noisy[name] == data.false_labels).float().mean(1)  # (D, M)
        back_true = (adv_noisy[name] == true_of_adv).float().mean(1)
        curves[name] = {
            "delta_scale": scales[name],
            "deltas": list(deltas),
            "normal_accuracy": (clean_noisy[name] == data.labels).float().mean((1, 2)).tolist(),
            "adversarial_true_label": back_true.mean(1).tolist(),
            "adversarial_keep_false": keep_false.mean(1).tolist(),
            "auroc_all": [auroc(s_adv[d], s_clean[d]) for d in range(len(deltas))],
            "auroc_calibration": [auroc(s_adv[d][adv_calibration], s_clean[d][calibration]) for d in range(len(deltas))],
            "auroc_heldout": [auroc(s_adv[d][~adv_calibration], s_clean[d][~calibration]) for d in range(len(deltas))],
            "heldout_keep_false": keep_false[:, ~adv_calibration].mean(1).tolist(),
            "heldout_true_label": back_true[:, ~adv_calibration].mean(1).tolist(),
        }
        for d, value in enumerate(curves[name]["auroc_calibration"]):
            choices.append((-np.nan_to_num(value, nan=-1.0), d, names.index(name), name))
    _, d_best, _, layer_best = min(choices)  # best calibration AUROC; ties → smaller δ, earlier layer
    best = curves[layer_best]
    return {
        "auroc": best["auroc_heldout"][d_best], "layer": layer_best, "delta": deltas[d_best],
        "delta_absolute": deltas[d_best] * scales[layer_best], "relative_delta": relative,
        "keep_false_at_best": best["heldout_keep_false"][d_best],
        "true_label_at_best": best["heldout_true_label"][d_best],
        "normal_accuracy_at_best": best["normal_accuracy"][d_best],
        "fgsm": {"eps": eps, "success_rate": data.success_rate, "correct_clean": int(len(data.labels)),
                 "adversarials": int(len(data.source))},
        "samples": {"calibration_clean": int(calibration.sum()), "heldout_clean": int((~calibration).sum()),
                    "calibration_adversarial": int(adv_calibration.sum()),
                    "heldout_adversarial": int((~adv_calibration).sum())},
        "draws": draws, "curves": curves,
    }

