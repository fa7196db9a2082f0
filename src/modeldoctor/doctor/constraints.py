"""The treatment constraints of Model Doctor: channel-wise (Eq. 5) and space-wise (Eq. 6), plus the peer method.

Each takes the noisy-replay gradients ``g[j, b, k, h, w] = ∂ŷ/∂(m_k^r + σ^j)`` of one layer r (shape
(J, B, K, H, W), from :meth:`modeldoctor.core.replay.NoiseReplay.gradients` with ``create_graph=True`` so the
constraint can itself be differentiated with respect to the parameters: double backpropagation; without it
the constraints have no effect on training, the bug of the authors' public code).

Forms (``form``):

* ``"paper"`` — the literal sums of Eq. 5 / Eq. 6 per image, averaged over the images they apply to.
  Raw gradient magnitudes can be lowered by shrinking every gradient (the logit scale), which also
  erases the signal the classifier needs; cross-entropy resists this only partly.
* ``"share"`` — scale-free: the constrained part's share of the image's gradient mass, e.g.
  ``Σ I_bg |g| / Σ |g|`` (Eq. 6) or ``Σ 1[ā<v] |g| / Σ |g|`` (Eq. 5, first term).  Rescaling the logits
  leaves it unchanged, so it can only fall by moving gradient mass to the object / relevant kernels.
* ``"activation"`` (space-wise only) — the background share of the activation-weighted map
  ``A = Σ_j |Σ_k m_k ⊙ ∂ŷ/∂(m_k+σ^j)|`` (Grad-CAM-like, per position).  Unlike |∂ŷ/∂m|, ``A`` depends on
  m^r itself and so on every weight before r: in a ReLU network this is the form whose gradient reaches
  the layers that compute the background features (see :mod:`modeldoctor.core.surrogate` for the other way).

The peer method — the masked input-gradient penalty of Ross et al. — is
:func:`modeldoctor.analyses.input_gradients.input_gradient_penalty` (re-exported here).
"""

from __future__ import annotations

from typing import Literal

import torch

from modeldoctor.analyses.input_gradients import input_gradient_penalty
from modeldoctor.core.errors import UserError

__all__ = ["channel_constraint", "spatial_constraint", "input_gradient_penalty", "below_threshold",
           "first_classes", "competitor_classes", "aggregated_abs", "activation_map"]

Form = Literal["paper", "share", "activation"]
EPS = 1e-12


def aggregated_abs(grads: torch.Tensor) -> torch.Tensor:
    """``Σ_j |∂ŷ/∂(m^r + σ^j)|``: (J, B, K, H, W) → (B, K, H, W)."""
    if grads.dim() != 5:
        raise UserError(f"expected replay gradients of shape (J, B, K, H, W), got {tuple(grads.shape)}")
    return grads.abs().sum(0)


def activation_map(grads: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``A = Σ_j |Σ_k m_k ⊙ ∂ŷ/∂(m_k^r + σ^j)|``: (J, B, K, H, W) gradients and (B, K, H, W) features → (B, H, W)."""
    if grads.dim() != 5 or grads.shape[1:] != features.shape:
        raise UserError(f"gradients {tuple(grads.shape)} do not match features {tuple(features.shape)}; "
                        "expected (J, B, K, H, W) and (B, K, H, W)")
    return (grads * features.unsqueeze(0)).sum(2).abs().sum(0)


def below_threshold(abar_rows: torch.Tensor, v: float) -> torch.Tensor:
    """The indicator ``1[ā_k^{n,r} < v]`` of Eq. 5 for each image's class row ``ā^{n,r}``: (B, K) → bool (B, K)."""
    return abar_rows < v


def first_classes(logits: torch.Tensor, labels: torch.Tensor, which: str = "label") -> torch.Tensor:
    """Class ``n`` of the first term: the ground truth (``"label"``) or the predicted class (``"pred"``, the paper's ŷ_n)."""
    if which == "label":
        return labels
    if which == "pred":
        return logits.detach().argmax(1)
    raise UserError(f"unknown first-term class {which!r}; choose label or pred")


def competitor_classes(logits: torch.Tensor, labels: torch.Tensor, first: torch.Tensor,
                       which: str = "runner_up") -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``s`` of Eq. 5's second term and a (B,) weight saying which images carry that term.

    ``"runner_up"`` (paper): the highest-scoring class other than ``first``, for every image.
    ``"wrong_top1"``: the predicted class, only for images whose prediction differs from the label.
    """
    scores = logits.detach().clone()
    if which == "runner_up":
        scores.scatter_(1, first.view(-1, 1), float("-inf"))
        return scores.argmax(1), torch.ones(len(labels), dtype=scores.dtype, device=scores.device)
    if which == "wrong_top1":
        pred = scores.argmax(1)
        return pred, (pred != labels).to(scores.dtype)
    raise UserError(f"unknown competitor {which!r}; choose runner_up or wrong_top1")


def channel_constraint(first_grads: torch.Tensor, competitor_grads: torch.Tensor, irrelevant: torch.Tensor,
                       competitor_weight: torch.Tensor | None = None,
                       competitor_kernels: torch.Tensor | None = None, form: Form = "paper") -> torch.Tensor:
    """Eq. 5, the channel-wise constraint on layer r, averaged over the B images of the batch:

    ``L_ch^r = Σ_k 1[ā_k^{n,r} < v] Σ_j Σ_{h,w} |∂ŷ_n/∂(m_k^r+σ^j)| + Σ_k Σ_j Σ_{h,w} |∂ŷ_s/∂(m_k^r+σ^j)|``

    ``first_grads`` / ``competitor_grads``: (J, B, K, H, W) gradients of ŷ_n and of the competitor ŷ_s;
    ``irrelevant``: (B, K) bool, the indicator 1[ā_k^{n,r} < v] for each image's class n;
    ``competitor_weight``: (B,) which images carry the second term (default all);
    ``competitor_kernels``: (B, K) bool restricting the second term to the competitor's relevant kernels
    (the authors' code) instead of all K kernels (the paper).
    ``form="share"`` divides the first term by ``Σ_k Σ_j Σ |∂ŷ_n/∂m|`` and the second by the sum of both
    classes' gradient mass, which makes both scale-free.
    """
    first = aggregated_abs(first_grads).sum((2, 3))  # (B, K)
    second = aggregated_abs(competitor_grads).sum((2, 3))
    if irrelevant.shape != first.shape:
        raise UserError(f"kernel indicator has shape {tuple(irrelevant.shape)}, gradients give {tuple(first.shape)}")
    term1 = (first * irrelevant.to(first)).sum(1)
    kept = second if competitor_kernels is None else second * competitor_kernels.to(second)
    term2 = kept.sum(1)
    if form == "share":
        term1 = term1 / (first.sum(1) + EPS)
        term2 = term2 / (first.sum(1) + second.sum(1) + EPS)
    elif form != "paper":
        raise UserError(f"unknown constraint form {form!r}; choose paper or share")
    if competitor_weight is not None:
        term2 = term2 * competitor_weight.to(term2)
    return (term1 + term2).mean()


def spatial_constraint(grads: torch.Tensor, background: torch.Tensor, annotated: torch.Tensor | None = None,
                       form: Form = "paper", normalise: Literal["annotated", "batch"] = "annotated",
                       features: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6, the space-wise constraint on layer r: ``L_sp^r = Σ_{h,w} I_bg^r ⊙ Σ_k Σ_j |∂ŷ_n/∂(m_k^r+σ^j)|``.

    ``grads``: (J, B, K, H, W) gradients of ŷ_n; ``background``: (B, 1, H, W) (or (B, H, W)) mask, 1 on
    the (expanded) background; ``annotated``: (B,) bool, images without a mask contribute nothing.
    ``normalise="annotated"`` averages over the annotated images (a few masks are not drowned by the
    unannotated majority); ``"batch"`` divides by B as a per-image loss averaged over the batch would.
    ``form="share"``: the background share of gradient mass ``Σ I_bg |g| / Σ |g|`` per image;
    ``form="activation"``: the background share ``Σ I_bg A / Σ A`` of :func:`activation_map` (needs ``features``,
    the layer's (B, K, H, W) output m^r, taken with its graph so the term reaches the layers before r).
    """
    if form == "activation":
        if features is None:
            raise UserError("the activation form of the space-wise constraint needs the layer's features")
        agg = activation_map(grads, features)
    elif form in ("paper", "share"):
        agg = aggregated_abs(grads).sum(1)  # (B, H, W): Σ_k Σ_j |g|
    else:
        raise UserError(f"unknown constraint form {form!r}; choose paper, share or activation")
    bg = background.reshape(agg.shape).to(agg)
    per_image = (agg * bg).sum((1, 2))
    if form != "paper":
        per_image = per_image / (agg.sum((1, 2)) + EPS)
    weight = torch.ones_like(per_image) if annotated is None else annotated.to(per_image)
    if normalise == "annotated":
        return (per_image * weight).sum() / weight.sum().clamp_min(1.0)
    if normalise == "batch":
        return (per_image * weight).sum() / len(per_image)
    raise UserError(f"unknown normalisation {normalise!r}; choose annotated or batch")
