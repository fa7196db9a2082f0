"""Adversarial detectors side by side: Discovery 2's feature-noise scores and feature squeezing (Xu et al. 2018),
each calibrated on adversarials of one split (validation) and judged on another (test).

Noise statistics at layer r, noise ``σ^j ~ U(−δ·std(m^r), δ·std(m^r))``, j = 1 … J, p = the un-noised prediction,
``g(z) = z_p − max_{c≠p} z_c`` the logit margin, z = f(x), z^j = f(x; m^r + σ^j):

* ``flip``        = (1/J) Σ_j 1[argmax z^j ≠ p] — the share of noisy replays that leave class p;
* ``margin``      = −(1/J) Σ_j g(z^j) — how far the noisy replays sit from leaving p (δ = 0 makes it the plain
  logit margin: a confidence baseline, reported as such when chosen);
* ``margin_drop`` = g(z) − (1/J) Σ_j g(z^j) — how much the noise erodes the margin;
* ``kl``          = (1/J) Σ_j KL(softmax z ‖ softmax z^j);
* ``logit_std``   = std_j z^j_p — the spread of the predicted class's logit over the replays.

``layer="all"`` averages a single score over the layers.  The combined detector (:func:`fit_combiner`) is a
logistic regression ``P(adversarial | x) = 1 / (1 + exp(−w·φ(x) − b))`` on the standardised instability
statistics φ = (flip, margin_drop, kl, logit_std) at every layer and every δ > 0 — each statistic is 0 without
noise, so it measures instability, not confidence; its L2 weight C is chosen by 5-fold cross-validated AUROC within
the calibration split (folds grouped by source image), and it is fit on the calibration split only.

Feature squeezing scores an image by ``‖softmax f(x) − softmax f(s(x))‖₁`` for one squeezer s of :data:`SQUEEZERS`
(bit-depth reduction to b bits, then an s×s median filter), chosen on the calibration split (Xu et al.'s joint
detector takes the maximum of the score over 1-bit and 2×2-median squeezers on MNIST).  Every free choice (score
kind, layer, δ; combiner weights; squeezer settings) is made on the calibration split's adversarials; the test
AUROC is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from modeldoctor.analyses.stability import AdversarialSet, activation_std, auroc, noisy_logits, successful_adversarials
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.data.bundle import ImageSplit

RELATIVE_DELTAS = (0.0, 0.5, 1.0, 2.0, 3.0)
SCORES = ("flip", "margin", "margin_drop", "kl", "logit_std")
INSTABILITY = ("flip", "margin_drop", "kl", "logit_std")  # the combiner's statistics: all 0 at δ = 0
SQUEEZERS = ({"bits": 1, "median": 2}, {"bits": 1, "median": 0}, {"bits": 0, "median": 2},
             {"bits": 4, "median": 2}, {"bits": 4, "median": 0})


def noise_scores(clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The :data:`SCORES` (D, N) from clean logits (N, K) and noisy logits (D, J, N, K); formulas in the module doc."""
    pred = clean.argmax(1)
    index = pred.view(1, 1, -1, 1).expand(*noisy.shape[:3], 1)
    picked = noisy.gather(-1, index).squeeze(-1)
    noisy_margin = (picked - noisy.scatter(-1, index, float("-inf")).amax(-1)).mean(1)
    clean_margin = clean.gather(1, pred[:, None]).squeeze(1) - clean.scatter(1, pred[:, None], float("-inf")).amax(1)
    log_p, log_q = clean.log_softmax(1), noisy.log_softmax(-1)
    stats = {"flip": (noisy.argmax(-1) != pred).float().mean(1), "margin": -noisy_margin,
             "margin_drop": clean_margin - noisy_margin, "kl": (log_p.exp() * (log_p - log_q)).sum(-1).mean(1),
             "logit_std": picked.std(1, unbiased=False)}
    return {name: value.cpu() for name, value in stats.items()}  # per-image numbers: the rest runs on the CPU


def instability_matrix(scores: dict[str, dict[str, torch.Tensor]], deltas: Sequence[float]) -> np.ndarray:
    """φ (N, features): every :data:`INSTABILITY` statistic at every layer of ``scores`` (layer → :func:`noise_scores`)
    and every δ > 0, in the order layer, statistic, δ."""
    keep = [d for d, delta in enumerate(deltas) if delta > 0]
    columns = [layer[kind][d] for layer in scores.values() for kind in INSTABILITY for d in keep]
    if not columns:
        raise UserError("the combined noise detector needs at least one δ > 0; e.g. --deltas 0,0.5,1,2,3")
    return torch.stack(columns, 1).double().numpy()


@dataclass
class Combiner:
    """A fitted combined noise detector: standardisation + logistic regression, and how its weight C was chosen."""

    model: Pipeline
    C: float
    auroc_cv: float  # mean cross-validated AUROC of the chosen C within the fitting split

    def score(self, phi: np.ndarray) -> np.ndarray:
        """``P(adversarial | φ)`` in [0, 1] for the rows of φ (N, features)."""
        return self.model.predict_proba(phi)[:, 1]


def fit_combiner(normal: np.ndarray, adversarial: np.ndarray, source: np.ndarray, folds: int = 5,
                 grid: Sequence[float] = tuple(np.logspace(-3, 2, 11).tolist())) -> Combiner:
    """Logistic regression on standardised φ, adversarial (1) against clean (0), fit on these rows only; the L2
    weight C (``grid``) by cross-validated AUROC, folds grouped by image (clean image i and its adversarials,
    ``source`` → i, share a fold; folds missing a class are skipped; ties: the smaller C).  C = 1 without any
    usable fold."""
    def pipeline(c: float) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    x = np.concatenate([normal, adversarial])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(adversarial))])
    groups = np.concatenate([np.arange(len(normal)), source])
    splits = [(fit, held) for fit, held in GroupKFold(n_splits=max(2, min(folds, len(adversarial)))).split(x, y, groups)
              if len(np.unique(y[fit])) == 2 and len(np.unique(y[held])) == 2]
    if not splits:  # too few adversarials to cross-validate: scikit-learn's default C = 1
        return Combiner(pipeline(1.0).fit(x, y), 1.0, float("nan"))

    def cv_auroc(c: float) -> float:
        scores = [auroc(*(pipeline(c).fit(x[fit], y[fit]).predict_proba(x[held])[:, 1][y[held] == k] for k in (1, 0)))
                  for fit, held in splits]
        return float(np.nanmean(scores))

    table = {c: cv_auroc(c) for c in grid}
    best = max(grid, key=lambda c: (table[c], -c))
    return Combiner(pipeline(best).fit(x, y), float(best), table[best])


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


Scores = dict[str, dict[str, torch.Tensor]]  # layer → score kind → (D, N)


def _split_scores(model: nn.Module, data: AdversarialSet, layers: Sequence[str], deltas: Sequence[float], draws: int,
                  scales: dict[str, float], seed: int) -> tuple[Scores, Scores]:
    """:func:`noise_scores` of the clean images and of the adversarials of ``data``, per layer."""
    clean_logits, clean_noisy = noisy_logits(model, data.clean, layers, deltas, draws, scales, seed=seed)
    adv_logits, adv_noisy = noisy_logits(model, data.adversarial, layers, deltas, draws, scales, seed=seed + 1)
    return ({name: noise_scores(clean_logits, clean_noisy[name]) for name in layers},
            {name: noise_scores(adv_logits, adv_noisy[name]) for name in layers})


def _single_table(normal: Scores, adversarial: Scores, deltas: Sequence[float]) -> dict[tuple[str, str, float], float]:
    """AUROC of every (score kind, layer or "all", δ): adversarials against their clean images."""
    table = {}
    for kind in SCORES:
        for d, delta in enumerate(deltas):
            for name in normal:
                table[(kind, name, delta)] = auroc(adversarial[name][kind][d], normal[name][kind][d])
            mean_normal = torch.stack([normal[n][kind][d] for n in normal]).mean(0)
            mean_adv = torch.stack([adversarial[n][kind][d] for n in normal]).mean(0)
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
    """The noise detectors (combined: :func:`fit_combiner`; best single score; best flip share) and feature
    squeezing, each fit or chosen on ``calibration`` adversarials and their clean images, AUROC on ``test``."""
    if draws < 1 or not deltas or any(d < 0 for d in deltas):
        raise UserError("need draws ≥ 1 and relative δ ≥ 0; e.g. --deltas 0,0.5,1,2,3 --draws 10")
    names = list(layers) if layers else spaced_convs(model)
    sets = {split: successful_adversarials(model, data, eps, max_samples, attack=attack)
            for split, data in (("calibration", calibration), ("test", test))}
    if any(len(s.source) == 0 for s in sets.values()):
        raise UserError(f"{attack} at ε={eps} fooled no correct image in one of the splits; raise --eps")
    scales = activation_std(model, sets["calibration"].clean, names)
    scores = {split: _split_scores(model, s, names, deltas, draws, scales, seed) for split, s in sets.items()}
    tables = {split: _single_table(*pair, deltas) for split, pair in scores.items()}
    def chosen(kinds: Sequence[str]) -> tuple[str, str, float]:  # best calibration AUROC; ties: smaller δ
        keys = [key for key in tables["calibration"] if key[0] in kinds]
        return max(keys, key=lambda key: (tables["calibration"][key], -key[2]))

    best, flip = chosen(SCORES), chosen(("flip",))
    phi = {split: (instability_matrix(pair[0], deltas), instability_matrix(pair[1], deltas))
           for split, pair in scores.items()}
    combiner = fit_combiner(phi["calibration"][0], phi["calibration"][1], sets["calibration"].source.cpu().numpy())
    combined = {split: auroc(combiner.score(pair[1]), combiner.score(pair[0])) for split, pair in phi.items()}
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
        "auroc_noise_combined": combined["test"],
        "combined_fit": {"features": int(phi["calibration"][0].shape[1]), "statistics": list(INSTABILITY),
                         "relative_deltas": [d for d in deltas if d > 0], "C": combiner.C,
                         "auroc_calibration_cv": combiner.auroc_cv,
                         "auroc_calibration_in_sample": combined["calibration"]},
        "auroc_noise_flip": tables["test"][flip],
        "flip_choice": {"layer": flip[1], "relative_delta": flip[2], "auroc_calibration": tables["calibration"][flip]},
        "auroc_feature_squeezing": squeeze_tables["test"][squeezer],
        "squeezing_choice": {"bits": squeezer[0], "median": squeezer[1],
                             "auroc_calibration": squeeze_tables["calibration"][squeezer]},
        "noise_table_test": {f"{k}|{n}|{d:g}": v for (k, n, d), v in tables["test"].items()},
        "squeezing_table_test": {f"bits={b}|median={m}": v for (b, m), v in squeeze_tables["test"].items()},
        "draws": draws, "layers": names,
    }
