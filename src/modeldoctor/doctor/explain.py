"""Single-image diagnosis: which kernels this image leans on unlike its class, and where in the image.

For one image and a diagnosed layer r: the per-kernel gradient profile a_k (Eq. 4, with the diagnosis's J,
δ and options) for the predicted class and for the true class, each normalised to shares summing to 1 and
compared with that class's normalised ā; and the summed derivative map Σ_k |∂ŷ_n/∂m_k^r| (Discovery 1,
Fig. 2b) upsampled to the image, with the share of it that falls on the background when a mask is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeldoctor.analyses.gradcam import derivative_map
from modeldoctor.core.device import model_device
from modeldoctor.core.files import atomic_path
from modeldoctor.core.layers import train_mode
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.masks import resize_mask
from modeldoctor.doctor.diagnosis import Diagnosis, correlation_index, sample_seeds


@dataclass
class Explanation:
    """Everything `modeldoctor explain` reports for one image (maps are [H, W] at the image's size)."""

    layer: str
    prediction: int
    confidence: float
    runner_up: int
    runner_up_confidence: float
    label: int | None
    kernels_vs_predicted: list[dict[str, float]]
    kernels_vs_true: list[dict[str, float]]
    derivative_map: torch.Tensor
    background_share: float | None = None
    object_area: float | None = None  # fraction of the image inside the object mask


def shares(values: torch.Tensor) -> torch.Tensor:
    """Normalise a non-negative profile to shares summing to 1 (all-zero stays zero)."""
    total = values.sum(-1, keepdim=True)
    return values / total.clamp_min(torch.finfo(values.dtype).tiny)


def deviating_kernels(sample: torch.Tensor, profile: torch.Tensor, top: int = 5) -> list[dict[str, float]]:
    """The ``top`` kernels whose share in this sample differs most from the class profile's share.

    deviation_k = s_k − p_k with s = shares(sample a), p = shares(class ā); positive = the sample leans on
    kernel k more than the class usually does.
    """
    s, p = shares(sample.double()), shares(profile.double())
    deviation = s - p
    order = deviation.abs().argsort(descending=True)[:top]
    return [{"kernel": int(k), "sample_share": float(s[k]), "class_share": float(p[k]),
             "deviation": float(deviation[k])} for k in order]


def background_share(derivative_map: torch.Tensor, object_mask: torch.Tensor) -> float:
    """Σ map over background pixels / Σ map; ``object_mask`` is True on the object, at the map's size."""
    total = float(derivative_map.sum())
    return float(derivative_map[~object_mask].sum()) / total if total > 0 else float("nan")


def explain_image(model: nn.Module, image: torch.Tensor, diagnosis: Diagnosis, layer: str | None = None,
                  label: int | None = None, object_mask: torch.Tensor | np.ndarray | None = None,
                  top: int = 5, seed_index: int = 0) -> Explanation:
    """Explain one normalised image (C, H, W) against ``diagnosis`` at ``layer`` (default: its deepest layer)."""
    layer = layer or max(diagnosis.layers, key=lambda n: diagnosis.layers[n].depth)
    info = diagnosis.layer(layer)
    opts = diagnosis.options
    device = model_device(model)
    with train_mode(model, False):
        replay = NoiseReplay(model, [layer])
        with torch.no_grad():
            state = replay.forward(image.unsqueeze(0).to(device))
        prob = state.logits.float().softmax(1)[0].cpu()
        top2 = prob.topk(min(2, len(prob)))
        pred = int(top2.indices[0])
        true = pred if label is None else int(label)
        result = replay.gradients(state, layer, [torch.tensor([pred], device=device),
                                                 torch.tensor([true], device=device)], opts.noise_draws,
                                  info.delta, opts.output,
                                  sample_seeds=sample_seeds(torch.tensor([seed_index]), opts.seed, layer))
    corr = info.correlation
    size = (image.shape[-2], image.shape[-1])
    grads = [g.cpu() for g in result.grads]
    dmap = derivative_map(grads[0], size)[0]
    mask = resize_mask(object_mask, size) if object_mask is not None else None
    runner = int(top2.indices[1]) if len(top2.indices) > 1 else pred
    return Explanation(
        layer, pred, float(prob[pred]), runner, float(prob[runner]), label,
        deviating_kernels(correlation_index(grads[0], opts.reduce)[0], corr[pred], top),
        deviating_kernels(correlation_index(grads[1], opts.reduce)[0], corr[true], top),
        dmap, background_share(dmap, mask) if mask is not None else None,
        float(mask.float().mean()) if mask is not None else None)


def save_overlay(path: str | Path, raw_image: torch.Tensor, derivative_map: torch.Tensor,
                 object_mask: torch.Tensor | None = None, title: str = "") -> Path:
    """Write a PNG: the image, and the image with the summed derivative map over it (inferno colour map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = raw_image.detach().cpu().clamp(0, 1)
    img = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    cmap_img = "gray" if img.ndim == 2 else None
    heat = derivative_map.detach().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(img, cmap=cmap_img)
    axes[0].set_title("image")
    axes[1].imshow(img, cmap=cmap_img)
    shown = axes[1].imshow(heat / max(float(heat.max()), 1e-12), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    if object_mask is not None:
        axes[1].contour(object_mask.numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1].set_title("Σ_k |∂ŷ/∂m_k|")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
