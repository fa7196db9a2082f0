"""Class-specific influential features and the decomposed final layer (Badola et al., "Decomposing the Deep").

Notation: ``x ∈ R^m`` is the feature vector entering the final ``nn.Linear`` (the pooled activation), ``W ∈ R^{n×m}``
its weight for ``n`` classes.

* Algorithm 1, line 6: per training instance the top-k₁ features by ℓ₁ norm (a scalar feature's ℓ₁ norm is |x_j|).
* Algorithm 1, line 8: ``HIST`` counts, per class, how often each index is among its instances' top-k₁;
  the class's influential set ``J_c`` is the top-k₂ most frequent indices.
* §5.2.4, decomposed softmax: ``logit_c = Σ_{j ∈ J_c} W_cj x_j + b_c`` (weight masked per class).
* §5.2.1: ``r_A = A_d / A_f`` (decomposed over full accuracy); §4.2's aim, the share of samples whose decomposed
  prediction equals the full one, is reported beside it as ``agreement``.
* §5.2.3: final-layer multiply-adds ``n·m`` (full) vs ``Σ_c |J_c|`` (decomposed).
* §5.2.6, Table 8: essentiality, the full layer's accuracy when a sample's class-influential features (or as
  many random non-influential ones) are replaced by Gaussian noise with the training set's per-feature mean/std.

k₁ and k₂ are integers, or fractions in (0, 1): the smallest count whose (ℓ₁ / histogram) mass reaches it.
Choosing k on validation and retraining the decomposed network: :mod:`modeldoctor.analyses.decompose_protocol`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.device import model_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import FeatureCapture, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.stats import leading_mass
from modeldoctor.data.bundle import ImageSplit, make_loader, unpack_batch

Count = int | float


@dataclass
class FinalFeatures:
    """What enters the final linear layer for a whole split, with the model's own logits."""

    features: torch.Tensor  # (N, m)
    labels: torch.Tensor  # (N,)
    logits: torch.Tensor  # (N, n)


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` in registration order: the classifier the paper decomposes."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UserError("the model has no nn.Linear layer; decompose needs a network ending in a linear classifier")
    return found[-1]


@torch.no_grad()
def final_features(model: nn.Module, split: ImageSplit, batch_size: int = 256) -> FinalFeatures:
    """Capture the final linear layer's input for every sample (eval mode; mode restored afterwards).

    Checks that the linear layer's output is the model's logits, which the cached-feature computations rely on.
    """
    name, linear = final_linear(model)
    feats, labels, logits = [], [], []
    device = model_device(model)
    with train_mode(model, False):
        for batch in make_loader(split, batch_size):
            x, y, _ = unpack_batch(batch)
            with FeatureCapture(model, [name], source="input") as cap:
                out = select_logits(model(x.to(device))).float()
            f = cap.captured[name]
            if f.dim() != 2:
                raise UserError(f"the input of {name!r} has shape {tuple(f.shape)}; decompose needs (batch, features)")
            if not torch.allclose(linear(f).float(), out, rtol=1e-4, atol=1e-4):
                raise UserError(f"the output of {name!r} is not the model's logits; decompose needs the last "
                                "linear layer to produce the logits directly")
            feats.append(f.float().cpu())
            labels.append(y)
            logits.append(out.cpu())
    return FinalFeatures(torch.cat(feats), torch.cat(labels), torch.cat(logits))


def _top_mask(scores: torch.Tensor, k: Count) -> torch.Tensor:
    """Boolean mask of each row's top-k scores (ties: lower index first), k an int or a mass fraction."""
    if isinstance(k, float) and 0 < k < 1:
        return leading_mass(scores, k)
    if not (isinstance(k, int) and k >= 1):
        raise UserError(f"k must be a positive integer or a fraction in (0, 1), got {k!r}")
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    counts = torch.full((scores.shape[0],), min(k, scores.shape[1]))
    ranks = torch.empty_like(order.indices)
    ranks.scatter_(1, order.indices, torch.arange(scores.shape[1]).expand_as(order.indices))
    return ranks < counts.unsqueeze(1)


def instance_top_features(features: torch.Tensor, k1: Count) -> torch.Tensor:
    """Algorithm 1, line 6: boolean (N, m), True at each instance's top-k₁ features by ℓ₁ norm |x_j|."""
    return _top_mask(features.abs(), k1)


def class_histogram(selected: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Algorithm 1, HIST: (n, m) counts, ``H[c, j]`` = number of class-c instances with j in their top-k₁."""
    onehot = F.one_hot(labels, num_classes).to(torch.float64)
    return (onehot.T @ selected.to(torch.float64)).round().long()


def influential_features(histogram: torch.Tensor, k2: Count) -> torch.Tensor:
    """Algorithm 1, line 8: boolean (n, m) mask of each class's top-k₂ most frequent indices ``J_c``."""
    return _top_mask(histogram.to(torch.float64), k2)


def find_influential(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k1: Count,
                     k2: Count) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 end to end: ``(influential mask (n, m), histogram (n, m))`` from training features."""
    hist = class_histogram(instance_top_features(features, k1), labels, num_classes)
    return influential_features(hist, k2), hist


class DecomposedLinear(nn.Module):
    """§5.2.4 decomposed softmax: ``logit_c = Σ_{j ∈ J_c} W_cj x_j + b_c``; masked weights stay exactly zero.

    The weight is stored already masked and multiplied by the mask in ``forward``, so gradients and weight
    decay leave the masked entries at zero during retraining.
    """

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        if tuple(mask.shape) != tuple(linear.weight.shape):
            raise UserError(f"influential mask has shape {tuple(mask.shape)}, the layer's weight "
                            f"{tuple(linear.weight.shape)}; compute it for this model")
        mask = mask.to(device=linear.weight.device, dtype=linear.weight.dtype)
        self.mask: torch.Tensor
        self.register_buffer("mask", mask)
        self.weight = nn.Parameter(linear.weight.detach() * mask)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def to_linear(self) -> nn.Linear:
        """An ordinary ``nn.Linear`` computing the same function (zeros where masked), e.g. for a checkpoint."""
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.weight * self.mask)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def replace_module(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` at dotted ``name`` in ``model``; returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    setattr(parent, child, replacement)
    return original


@contextlib.contextmanager
def swapped_module(model: nn.Module, name: str, replacement: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``replacement`` at dotted ``name`` in ``model``; the original is back on exit."""
    original = replace_module(model, name, replacement)
    try:
        yield replacement
    finally:
        replace_module(model, name, original)


@contextlib.contextmanager
def decomposed(model: nn.Module, mask: torch.Tensor) -> Iterator[DecomposedLinear]:
    """Run ``model`` with its final linear layer decomposed by ``mask`` (n, m) inside the block."""
    name, linear = final_linear(model)
    layer = DecomposedLinear(linear, mask).train(linear.training)
    with swapped_module(model, name, layer):
        yield layer


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose arg-max logit is the label."""
    return (logits.argmax(1) == labels).float().mean().item() if len(labels) else 0.0


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """§4.2: share of samples with ``argmax logits = argmax reference`` (decomposed vs full prediction)."""
    return (logits.argmax(1) == reference.argmax(1)).float().mean().item() if len(logits) else 0.0


def relative_accuracy(decomposed_accuracy: float, full_accuracy: float) -> float:
    """§5.2.1: ``r_A = A_d / A_f``."""
    return decomposed_accuracy / full_accuracy if full_accuracy > 0 else float("nan")


def multiply_adds(mask: torch.Tensor) -> dict[str, float]:
    """§5.2.3: final-layer multiply-adds per sample, full ``n·m`` vs decomposed ``Σ_c |J_c|``."""
    full, kept = mask.numel(), int(mask.sum())
    return {"full": full, "decomposed": kept, "ratio": kept / full}


@torch.no_grad()
def layer_logits(layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A (full or decomposed) final layer applied to cached features (kept on the CPU), as float CPU logits."""
    weight = next(layer.parameters())
    return layer(features.to(device=weight.device, dtype=weight.dtype)).float().cpu()


@torch.no_grad()
def essentiality(linear: nn.Module, data: FinalFeatures, mask: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Table 8: accuracy of the (full) ``linear`` layer when each sample's class-influential features ``J_y``
    are replaced by ``N(mean_j, std_j)`` noise, vs the same number of random features outside ``J_y``.

    ``y`` is the sample's true label; results are averaged over ``repeats`` noise draws.
    """
    generator = torch.Generator().manual_seed(seed)
    influential = mask[data.labels].bool()  # (N, m)
    counts = influential.sum(1, keepdim=True)
    acc_inf: list[float] = []
    acc_non: list[float] = []
    for _ in range(repeats):
        scores = torch.rand(influential.shape, generator=generator).masked_fill(influential, -1.0)
        ranks = scores.argsort(1, descending=True).argsort(1)
        non_influential = (ranks < counts) & ~influential
        for chosen, out in ((influential, acc_inf), (non_influential, acc_non)):
            noise = mean + std * torch.randn(influential.shape, generator=generator)
            replaced = torch.where(chosen, noise, data.features)
            out.append(accuracy(layer_logits(linear, replaced), data.labels))
    return {"original": accuracy(layer_logits(linear, data.features), data.labels),
            "influential_replaced": sum(acc_inf) / repeats, "non_influential_replaced": sum(acc_non) / repeats,
            "features_replaced_per_sample": float(counts.float().mean())}


def mask_overlap(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per class ``|A_c ∩ B_c|`` and Jaccard ``|A_c ∩ B_c| / |A_c ∪ B_c|`` of two boolean (classes, features) masks,
    with the intersection expected for random sets of the same sizes (``|A_c|·|B_c| / m``) as a chance baseline.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise UserError(f"masks must both be (classes, features); got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    jaccard = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    chance = a.sum(1).float() * b.sum(1).float() / a.shape[1]
    return {"intersection": inter.long().tolist(), "jaccard": jaccard.tolist(),
            "mean_jaccard": jaccard.mean().item(), "chance_intersection": chance.tolist(),
            "mean_intersection": inter.mean().item(), "mean_chance_intersection": chance.mean().item()}


def compare_with_diagnosis(mask: torch.Tensor, diagnosis, layer: str) -> dict:
    """Influential features vs the diagnosis engine's relevant kernels of ``layer`` (the conv layer whose channels
    feed the final linear layer): overlap with the default relevance rule and with top-k at the same set sizes.
    ``diagnosis`` is a :class:`modeldoctor.doctor.diagnosis.Diagnosis`.
    """
    correlation = diagnosis.correlation(layer)
    if correlation.shape != mask.shape:
        raise UserError(f"the diagnosis of {layer!r} is {tuple(correlation.shape)} (classes, channels) but the final "
                        f"layer's features are {tuple(mask.shape)}; diagnose the conv layer that feeds the classifier")
    k = max(1, round(mask.sum(1).float().mean().item()))
    default = diagnosis.default_relevance()
    return {"layer": layer,
            "default_rule": {**default, **mask_overlap(mask, diagnosis.relevant(layer, **default))},
            "top_k_same_size": {"k": k, **mask_overlap(mask, diagnosis.relevant(layer, "topk", k=k))}}


def per_class_indices(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in mask.bool()]


def parse_count(text: str) -> Count:
    """``"5"`` → 5 (a count), ``"0.9"`` → 0.9 (a mass fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"k must be a positive integer or a fraction in (0, 1), got {text!r}") from None
    if value.is_integer() and value >= 1:
        return int(value)
    if 0 < value < 1 and math.isfinite(value):
        return value
    raise UserError(f"k must be a positive integer or a fraction in (0, 1), got {text!r}")
