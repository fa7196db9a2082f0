"""Adversarial detectors side by side: Discovery 2's feature-noise scores and feature squeezing (Xu et al. 2018),
each calibrated on adversarials of one split (validation) and judged on another (test).

Noise scores at layer r, noise ``U(−δ·std(m^r), δ·std(m^r))``, J draws, p = the un-noised prediction:

* ``flip``   = (1/J) Σ_j 1[argmax f(x; m^r + σ^j) ≠ p] — the share of noisy replays that leave class p;
* ``margin`` = −(1/J) Σ_j (z_p − max_{c≠p} z_c)(x; m^r + σ^j) — how far the noisy replays sit from leaving p
  (δ = 0 makes it the plain logit margin: a confidence baseline, reported as such when chosen).

``layer="all"`` averages a score over the layers.  Feature squeezing scores an image by
``max_s ‖softmax f(x) − softmax f(s(x))‖₁`` over the squeezers s: bit-depth reduction to b bits and an s×s
median filter (Xu et al. use 1 bit and 2×2 on MNIST).  Every free choice (score kind, layer, δ; squeezer
settings) is made by AUROC on the calibration split's adversarials; the test AUROC is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.stability import AdversarialSet, activation_std, auroc, noisy_logits, successful_adversarials
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.data.bundle import ImageSplit

RELATIVE_DELTAS = (0.0, 0.5, 1.0, 2.0, 3.0)
SQUEEZERS = ({"bits": 1, "median": 2}, {"bits": 1, "median": 0}, {"bits": 0, "median": 2},
             {"bits": 4, "median": 2}, {"bits": 4, "median": 0})


def noise_scores(clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"flip", "margin"}`` scores (D, N) from clean logits (N, K) and noisy logits (D, J, N, K)."""
    pred = clean.argmax(1)
    picked = noisy.gather(-1, pred.view(1, 1, -1, 1).expand(*noisy.shape[:3], 1)).squeeze(-1)
    others = noisy.scatter(-1, pred.view(1, 1, -1, 1).expand(*noisy.shape[:3], 1), float("-inf")).amax(-1)
    return {"flip": (noisy.argmax(-1) != pred).float().mean(1), "margin": -(picked - others).mean(1)}


def squeeze(raw: torch.Tensor, bits: int = 0, median: int = 0) -> torch.Tensor:
    """Raw images (N, C, H, W) in [0, 1] reduced to ``bits`` bits (0: unchanged), then ``median``×``median``
    median-filtered (0: none; windows anchored top-left, edges reflected)."""
    out = raw
    if bits:
        levels = 2 ** bits - 1
        out = torch.round(out * levels) / levels
    if median > 1:
        padded = F.pad(out, (0, median - 1, 0, median - 1), mode="reflect")
        windows = padded.unfold(2, median, 1).unfold(3, median, 1)
        out = windows.reshape(*windows.shape[:4], -1).median(-1).values
    return out


@torch.no_grad()
def squeezing_scores(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     bits: int, median: int, batch_size: int = 256) -> torch.Tensor:
    """Feature-squeezing score (N,) of normalised ``images``: ‖softmax f(x) − softmax f(squeeze(x))‖₁."""
    scores = []
    with train_mode(model, False):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            squeezed = (squeeze(x * std + mean, bits, median) - mean) / std
            p, q = (select_logits(model(v)).float().softmax(1) for v in (x, squeezed))
            scores.append((p - q).abs().sum(1))
    return torch.cat(scores)


def _noise_candidates(model: nn.Module, data: AdversarialSet, layers: Sequence[str], deltas: Sequence[float],
                      draws: int, scales: dict[str, float], seed: int) -> dict[tuple[str, str, float], float]:
    """AUROC of every (score kind, layer or "all", δ) on ``data`` — adversarials against their clean images."""
    clean_logits, clean_noisy = noisy_logits(model, data.clean, layers, deltas, draws, scales, seed=seed)
    adv_logits, adv_noisy = noisy_logits(model, data.adversarial, layers, deltas, draws, scales, seed=seed + 1)
    per_layer = {name: (noise_scores(clean_logits, clean_noisy[name]), noise_scores(adv_logits, adv_noisy[name]))
                 for name in layers}
    table = {}
    for kind in ("flip", "margin"):
        for d, delta in enumerate(deltas):
            for name, (normal, adversarial) in per_layer.items():
                table[(kind, name, delta)] = auroc(adversarial[kind][d], normal[kind][d])
            mean_normal = torch.stack([per_layer[n][0][kind][d] for n in layers]).mean(0)
            mean_adv = torch.stack([per_layer[n][1][kind][d] for n in layers]).mean(0)
            table[(kind, "all", delta)] = auroc(mean_adv, mean_normal)
    return table


def spaced_convs(model: nn.Module, count: int = 4) -> list[str]:
    """``count`` conv layers evenly spaced in depth, the last conv included: the noise detector's default layers."""
    convs = conv_layer_names(model)
    picks = sorted({round(i * (len(convs) - 1) / max(count - 1, 1)) for i in range(count)})
    return [convs[i] for i in picks]


def compare_detectors(model: nn.Module, calibration: ImageSplit, test: ImageSplit, eps: float = 0.1,
                      attack: str = "fgsm", layers: Sequence[str] | None = None,
                      deltas: Sequence[float] = RELATIVE_DELTAS, draws: int = 10, max_samples: int | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """The noise detector and feature squeezing, each chosen on ``calibration`` adversarials, AUROC on ``test``."""
    if draws < 1 or not deltas or any(d < 0 for d in deltas):
        raise UserError("need draws ≥ 1 and relative δ ≥ 0; e.g. --deltas 0,0.5,1,2,3 --draws 10")
    names = list(layers) if layers else spaced_convs(model)
    sets = {split: successful_adversarials(model, data, eps, max_samples, attack=attack)
            for split, data in (("calibration", calibration), ("test", test))}
    if any(len(s.source) == 0 for s in sets.values()):
        raise UserError(f"{attack} at ε={eps} fooled no correct image in one of the splits; raise --eps")
    scales = activation_std(model, sets["calibration"].clean, names)
    tables = {split: _noise_candidates(model, s, names, deltas, draws, scales, seed) for split, s in sets.items()}
    def chosen(kinds: tuple[str, ...]) -> tuple[str, str, float]:  # best calibration AUROC; ties: smaller δ
        keys = [key for key in tables["calibration"] if key[0] in kinds]
        return max(keys, key=lambda key: (tables["calibration"][key], -key[2]))

    best, flip = chosen(("flip", "margin")), chosen(("flip",))
    squeeze_tables: dict[str, dict[tuple[int, int], float]] = {}
    for split, s in sets.items():
        mean, std = calibration.mean.to(s.clean), calibration.std.to(s.clean)
        squeeze_tables[split] = {}
        for settings in SQUEEZERS:
            normal = squeezing_scores(model, s.clean, mean, std, **settings)
            adversarial = squeezing_scores(model, s.adversarial, mean, std, **settings)
            squeeze_tables[split][(settings["bits"], settings["median"])] = auroc(adversarial, normal)
    squeezer = max(squeeze_tables["calibration"], key=lambda key: squeeze_tables["calibration"][key])
    return {
        "attack": attack, "eps": eps,
        "success_rate": {split: s.success_rate for split, s in sets.items()},
        "adversarials": {split: int(len(s.source)) for split, s in sets.items()},
        "auroc_noise": tables["test"][best],
        "noise_choice": {"score": best[0], "layer": best[1], "relative_delta": best[2],
                         "auroc_calibration": tables["calibration"][best]},
        "auroc_noise_flip": tables["test"][flip],
        "flip_choice": {"layer": flip[1], "relative_delta": flip[2], "auroc_calibration": tables["calibration"][flip]},
        "auroc_feature_squeezing": squeeze_tables["test"][squeezer],
        "squeezing_choice": {"bits": squeezer[0], "median": squeezer[1],
                             "auroc_calibration": squeeze_tables["calibration"][squeezer]},
        "noise_table_test": {f"{k}|{n}|{d:g}": v for (k, n, d), v in tables["test"].items()},
        "squeezing_table_test": {f"bits={b}|median={m}": v for (b, m), v in squeeze_tables["test"].items()},
        "draws": draws, "layers": names,
    }
