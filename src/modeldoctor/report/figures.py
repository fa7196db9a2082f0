"""Report figures, one function per figure, from saved numbers only (matplotlib, Agg backend).

Every function returns a :class:`Figure` (the PNG bytes, a title that states what the reader should see, and
a short caption).  Colour maps: ``viridis`` for non-negative data (correlations), ``inferno`` overlays on
grey images (derivative maps, Grad-CAM), a diverging map only for signed data (accuracy changes).
Titles are computed from the data, so a figure never claims what its numbers do not show.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeldoctor.doctor.discovery import kernels_for_mass  # noqa: E402

SEQUENTIAL = "viridis"
OVERLAY = "inferno"
RUN_COLOURS = {"original": "#7f7f7f", "control": "#4c72b0", "treated": "#dd8452"}


@dataclass
class Figure:
    """One rendered figure: ``name`` becomes the PNG file name beside the HTML."""

    name: str
    title: str
    caption: str
    png: bytes


def _render(fig: plt.Figure, name: str, title: str, caption: str) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Figure(name, title, caption, buf.getvalue())


def kernel_order(abar: np.ndarray) -> np.ndarray:
    """Kernels sorted by the class they correlate with most, then by that correlation (descending).

    With rows min-max normalised, a sparse class × kernel matrix then shows as a staircase (paper Fig. 2a).
    """
    norm = row_normalise(abar)
    best = norm.argmax(0)
    return np.lexsort((-norm[best, np.arange(norm.shape[1])], best))


def row_normalise(abar: np.ndarray) -> np.ndarray:
    """Each class row min-max scaled to [0, 1] (classes with larger gradients would otherwise dominate)."""
    lo = abar.min(1, keepdims=True)
    span = abar.max(1, keepdims=True) - lo
    return (abar - lo) / np.where(span > 0, span, 1.0)


def correlation_heatmap(abar: np.ndarray, class_names: Sequence[str], layer: str) -> Figure:
    """Paper Fig. 2a / supp. Fig. 8–9: class × kernel correlation ā (Eq. 4), rows normalised, kernels ordered."""
    norm = row_normalise(abar)[:, kernel_order(abar)]
    counts = kernels_for_mass(torch.from_numpy(np.abs(abar))).tolist()
    channels = abar.shape[1]
    median = float(np.median(counts))
    fig, ax = plt.subplots(figsize=(10.5, 1.2 + 0.3 * len(class_names)))
    im = ax.imshow(norm, aspect="auto", cmap=SEQUENTIAL, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel=f"the {channels} kernels of {layer}, grouped by the class each serves most (position, not index)",
           ylabel="class")
    fig.colorbar(im, ax=ax, label="correlation ā (row min-max)", fraction=0.03, pad=0.01)
    share = median / channels
    title = (f"{layer}: each class relies on few of its {channels} kernels (a median {median:.0f}, {share:.0%}, hold "
             "90% of its correlation)" if share <= 0.25 else
             f"{layer}: classes spread over many of its {channels} kernels (a median {median:.0f}, {share:.0%}, hold 90%)")
    caption = ("Bright cells are kernels whose feature maps move the class score most (mean |∂ŷ/∂m| over "
               "confident training images, Eq. 4). A staircase of bright cells means class-specific kernels.")
    return _render(fig, f"correlation_{_slug(layer)}", title, caption)


def mass_vs_depth(layers: Sequence[str], counts: Sequence[Sequence[int]], channels: Sequence[int]) -> Figure:
    """Share of a layer's kernels holding 90% of each class's correlation mass, against depth (supp. Fig. 8)."""
    shares = [np.asarray(c, dtype=float) / ch for c, ch in zip(counts, channels)]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(layers)), 3.6))
    ax.boxplot(shares, positions=x, widths=0.5, showfliers=True)
    ax.plot(x, [np.median(s) for s in shares], "o-", color="#dd8452", label="median over classes")
    ax.set_xticks(x, [f"{n}\n({c} k.)" for n, c in zip(layers, channels)], fontsize=8)
    ax.set(xlabel="layer (input → output)", ylabel="share of kernels for 90% of ā", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    first, last = float(np.median(shares[0])), float(np.median(shares[-1]))
    title = ("Deeper layers concentrate each class on a smaller share of kernels" if last < first
             else "The share of kernels per class does not shrink with depth in this model")
    caption = f"Median share {first:.0%} in {layers[0]}, {last:.0%} in {layers[-1]}; boxes span the classes."
    return _render(fig, "kernels_vs_depth", title, caption)


def sample_vs_average(sample: np.ndarray, average: np.ndarray, class_name: str, layer: str,
                      confidence: float) -> Figure:
    """Supp. Fig. 7: one confident sample's kernel correlation next to its class average, same kernel order."""
    order = np.argsort(-average)
    a, s = average[order] / max(average.max(), 1e-12), sample[order] / max(sample.max(), 1e-12)
    cosine = float(sample @ average / max(np.linalg.norm(sample) * np.linalg.norm(average), 1e-12))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    k = np.arange(len(order))
    ax.bar(k, a, width=1.0, color="#4c72b0", alpha=0.55, label=f"class {class_name} average")
    ax.plot(k, s, ".", color="#dd8452", markersize=4, label=f"one sample (confidence {confidence:.2f})")
    ax.set(xlabel=f"kernel of {layer}, sorted by the class average", ylabel="correlation (÷ max)")
    ax.legend(fontsize=8)
    title = (f"One confident '{class_name}' uses the same kernels as its class average (cosine {cosine:.2f})"
             if cosine >= 0.8 else f"One confident '{class_name}' differs from its class average (cosine {cosine:.2f})")
    caption = "Per-sample ā (Eq. 4) against the class average in the same layer; the paper's supp. Fig. 7."
    return _render(fig, f"sample_vs_average_{_slug(layer)}", title, caption)


def image_grid(name: str, title: str, caption: str, rows: Sequence[tuple[str, Sequence[np.ndarray],
               Sequence[np.ndarray | None], Sequence[str]]]) -> Figure:
    """Rows of grey images, each row ``(label, images, overlays, titles)``; an overlay is a heat map drawn
    over its image (``None``: the plain image)."""
    cols = max(len(r[1]) for r in rows)
    fig, axes = _bare_axes(len(rows), cols, (1.55 * cols + 0.9, 1.75 * len(rows)))
    for r, (label, images, overlays, titles) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(images):
                ax.axis("off")
                continue
            heat = overlays[c]
            if heat is None:
                ax.imshow(_grey(images[c]), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(_grey(images[c]), cmap="gray", vmin=0, vmax=2)  # dimmed so the heat colours stand out
                ax.imshow(heat_rgba(heat))
            if titles[c]:
                ax.set_title(titles[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout(pad=0.4, h_pad=0.6)
    return _render(fig, name, title, caption)


def heat_rgba(heat: np.ndarray) -> np.ndarray:
    """A map min-max scaled, coloured with ``OVERLAY`` and as opaque as it is strong (its minimum see-through)."""
    low, span = float(heat.min()), float(heat.max() - heat.min())
    norm = np.clip((heat - low) / span, 0, 1) if span > 0 else np.zeros_like(heat)
    rgba = plt.get_cmap(OVERLAY)(norm)
    rgba[..., 3] = 0.75 * norm
    return rgba


def per_class_accuracy(class_names: Sequence[str], runs: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
                       split: str, seeds: int) -> Figure:
    """Paper Fig. 4: per-class accuracy of each run (bars, ± std over seeds) and treated − control (lower panel)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.7 * len(class_names) + 2), 5.4), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    x = np.arange(len(class_names))
    width = 0.8 / len(runs)
    for i, (run, (mean, std)) in enumerate(runs.items()):
        top.bar(x + (i - (len(runs) - 1) / 2) * width, 100 * mean, width, yerr=None if std is None else 100 * std,
                capsize=2, label=run, color=RUN_COLOURS.get(run))
    top.set(ylabel=f"{split} accuracy (%)", ylim=(max(0, 100 * min(m.min() for m, _ in runs.values()) - 10), 101))
    top.legend(fontsize=8, ncol=len(runs))
    top.grid(alpha=0.3, axis="y")
    title = f"Per-class {split} accuracy"
    if "treated" in runs and "control" in runs:
        diff = 100 * (runs["treated"][0] - runs["control"][0])
        limit = max(1.0, float(np.abs(diff).max()))
        bottom.bar(x, diff, color=plt.get_cmap("RdBu")(0.5 + diff / (2.4 * limit)), edgecolor="#333", linewidth=0.4)
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.set(ylabel="treated − control\n(points)")
        overall = float(diff.mean())
        title = (f"Treatment {'raises' if overall > 0 else 'lowers'} mean per-class {split} accuracy by "
                 f"{abs(overall):.1f} points over the matched control" if abs(overall) >= 0.05
                 else f"Treatment leaves per-class {split} accuracy where the matched control has it")
        spread = runs["treated"][1]
        if seeds == 1 or spread is None:
            title += " (one seed: no spread to judge it against)"
        elif abs(overall) <= 100 * float(np.mean(spread)):
            title += f" — within the spread over {seeds} seeds"
    bottom.set_xticks(x, class_names)
    bottom.set(xlabel="class")
    spread_text = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed (no spread available)"
    caption = f"Original, control (same fine-tuning without the constraints) and treated models; {spread_text}."
    return _render(fig, f"per_class_accuracy_{split}", title, caption)


def background_share(name: str, runs: Mapping[str, np.ndarray], background_area: float) -> Figure:
    """Share of the summed derivative map falling on the background, per image, for each model."""
    names = list(runs)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(names), 3.4))
    ax.boxplot([runs[n] for n in names], widths=0.45, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(background_area, color="#555", linestyle="--", linewidth=1,
               label=f"background's share of the pixels ({background_area:.0%})")
    ax.set(ylabel="share of Σ|∂ŷ/∂m| on background", ylim=(0, 1))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    means = {n: float(np.mean(v)) for n, v in runs.items()}
    title = (f"Summed derivative map Σ|∂ŷ/∂m| (paper Fig. 2b): {means[names[0]]:.0%} of it on the background, which "
             f"covers {background_area:.0%} of the pixels")
    if "treated" in means and "control" in means:
        title = (f"Summed derivative map Σ|∂ŷ/∂m| on the background: original {means[names[0]]:.0%}, control "
                 f"{means['control']:.0%}, treated {means['treated']:.0%} (background = {background_area:.0%} of pixels)")
    caption = ("Per test image: mass of the upsampled summed derivative map outside the (exact) digit mask divided "
               "by its total; triangles mark the means. Above the dashed line the model attends to the background more than "
               "its area warrants. In a ReLU network this map is blind to every weight before the layer, so it "
               "describes where the class score is sensitive, not whether the model reads the background.")
    return _render(fig, name, title, caption)


def thumbnails(name: str, title: str, caption: str, rows: Mapping[str, Sequence[tuple[np.ndarray, str]]]) -> Figure:
    """A row of small labelled images per key (e.g. per class: the images to annotate first)."""
    cols = max(len(v) for v in rows.values())
    fig, axes = _bare_axes(len(rows), cols, (1.05 * cols + 0.6, 1.3 * len(rows) + 0.2))
    for r, (label, items) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            if c < len(items):
                ax.imshow(_grey(items[c][0]), cmap="gray", vmin=0, vmax=1)
                ax.set_title(items[c][1], fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout(pad=0.2, h_pad=0.8)
    return _render(fig, name, title, caption)


def decomposition(summary: Mapping) -> Figure:
    """Decomposing the Deep: full vs decomposed (vs retrained, vs the retrained control) test accuracy, and
    Table 8 essentiality."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    bars = [(n, float(summary[k]), c) for n, k, c in (("full", "accuracy_full", "#7f7f7f"),
                                                       ("decomposed", "accuracy_decomposed", "#4c72b0"),
                                                       ("retrained", "accuracy_retrained", "#dd8452"),
                                                       ("full retrained\n(control)", "accuracy_control", "#55a868"))
            if summary.get(k) is not None]
    left.bar([b[0] for b in bars], [100 * b[1] for b in bars], color=[b[2] for b in bars])
    left.tick_params(axis="x", labelsize=8)
    left.set(ylabel="test accuracy (%)", ylim=(0, 100), title=f"r_A = A_d / A_f = {summary['r_A']:.3f}")
    ess = summary.get("essentiality") or {}
    if ess:
        labels = ["original", "influential\nreplaced", "as many others\nreplaced"]
        vals = [ess["original"], ess["influential_replaced"], ess["non_influential_replaced"]]
        right.bar(labels, [100 * v for v in vals], color=["#7f7f7f", "#c44e52", "#55a868"])
        right.set(ylabel="test accuracy (%)", ylim=(0, 100),
                  title=f"{ess['features_replaced_per_sample']:.1f} features per sample → noise")
    else:
        right.axis("off")
    kept = summary.get("k2", "k")
    title = (f"Keeping {kept} final-layer features per class retains {summary['r_A']:.0%} of the full accuracy")
    caption = "Left: the final layer restricted to each class's influential features (Algorithm 1)."
    if ess:
        gap = ess["non_influential_replaced"] - ess["influential_replaced"]
        caption += (f" Right (Table 8): replacing a sample's influential features by Gaussian noise costs "
                    f"{100 * (ess['original'] - ess['influential_replaced']):.1f} points, replacing as many others "
                    f"{100 * (ess['original'] - ess['non_influential_replaced']):.1f}"
                    + (" — the influential ones matter more." if gap > 0.005 else "."))
    return _render(fig, "decomposition", title, caption)


def decomposition_k_curve(summary: Mapping) -> Figure:
    """Decomposing the Deep, Fig. 3 on validation: r_A = A_d / A_f and A_d against k₂ (features kept per class),
    for k₁ = k₂ (the paper's setting) and for the k₁ with the best validation accuracy; the chosen k marked."""
    sel = summary["selection"]
    rows = [r for r in sel["curve"] if isinstance(r["k1"], int) and isinstance(r["k2"], int)]
    k2s = sorted({r["k2"] for r in rows})
    diagonal = {r["k2"]: r for r in rows if r["k1"] == r["k2"]}
    best = {k: max((r for r in rows if r["k2"] == k), key=lambda r: r["val_accuracy"]) for k in k2s}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "val_r_A", "validation r_A"), (axes[1], "val_accuracy", "validation A_d (%)")):
        scale = 100 if key == "val_accuracy" else 1
        ks = [k for k in k2s if k in diagonal]
        ax.plot(ks, [scale * diagonal[k][key] for k in ks], "o-", color="#4c72b0", label="k₁ = k₂")
        ax.plot(k2s, [scale * best[k][key] for k in k2s], "s--", color="#dd8452", label="best k₁ on val")
        ax.plot([sel["k2"]], [scale * sel[key]], "*", ms=14, color="#c44e52", label="chosen")
        ax.set(xscale="log", xlabel="k₂ (features per class)", ylabel=label)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xticks(k2s)
    axes[0].axhline(sel["min_r_a"], color="#7f7f7f", lw=0.8, ls=":")
    axes[1].axhline(100 * summary["val"]["accuracy_full"], color="#7f7f7f", lw=0.8, ls=":", label="full layer")
    axes[1].legend(fontsize=8)
    title = (f"On validation, k₁ = {sel['k1']}, k₂ = {sel['k2']} keeps r_A = {sel['val_r_A']:.3f} "
             f"with {sel['k2']} of {summary['features']} features per class")
    caption = (f"Algorithm 1 on the training split for every (k₁, k₂) of the grid, measured on validation; "
               f"choice: {sel['rule']}. Dotted: the r_A target {sel['min_r_a']} and the full layer's accuracy.")
    return _render(fig, "decomposition-k", title, caption)


def ablation_ranking(units: Sequence[Mapping], layer: str, label: int = 4) -> Figure:
    """Unit deletion: Δ accuracy when each unit is removed, all units sorted worst (removal helps) to best."""
    order = sorted(range(len(units)), key=lambda i: (-units[i]["delta"], units[i].get("delta_loss", 0.0), i))
    deltas = np.array([units[i]["delta"] for i in order]) * 100
    ids = [units[i]["unit"] for i in order]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    scale = max(1e-9, float(np.abs(deltas).max()))
    ax.bar(np.arange(len(order)), deltas, width=0.9, color=plt.get_cmap("RdBu_r")(0.5 + deltas / (2.2 * scale)))
    ax.axhline(0, color="black", linewidth=0.8)
    extremes = [r for r in list(range(label)) + list(range(len(order) - label, len(order)))
                if 0 <= r < len(order) and deltas[r] != 0]
    for r in dict.fromkeys(extremes):
        ax.annotate(f"#{ids[r]}", (r, deltas[r]), fontsize=7, ha="center", va="bottom" if deltas[r] > 0 else "top")
    ax.set(xlabel=f"units of {layer}, sorted from 'removal helps' to 'removal hurts' (labels: unit index)",
           ylabel="Δ accuracy when removed (points)")
    ax.set_xlim(-1, len(order))
    hurt, helped = int((deltas < 0).sum()), int((deltas > 0).sum())
    title = (f"Removing any one of {len(units)} units of {layer} changes accuracy by at most "
             f"{np.abs(deltas).max():.1f} points")
    caption = (f"{hurt} of {len(units)} units help (removing one lowers accuracy, blue), {helped} hurt (removing one "
               "raises it, red), the rest change nothing. Ties are broken by the change in loss.")
    return _render(fig, f"ablation_{_slug(layer)}", title, caption)


def stability_curves(result: Mapping) -> Figure:
    """Fig. 3 from stability.json: per layer, normal accuracy and adversarial true-label / keep-false shares."""
    names = list(result["curves"])
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.5, 4.8 * len(names)), 3.8), squeeze=False)
    unit = "δ × activation std" if result["relative_delta"] else "δ"
    for ax, name in zip(axes[0], names):
        c = result["curves"][name]
        ax.plot(c["deltas"], c["normal_accuracy"], "o-", color="#4c72b0", label="normal: accuracy")
        ax.plot(c["deltas"], c["adversarial_true_label"], "s-", color="#55a868", label="adversarial: back to true label")
        ax.plot(c["deltas"], c["adversarial_keep_false"], "^-", color="#c44e52", label="adversarial: keeps false label")
        ax.set(xlabel=f"noise range {unit} at {name}", ylabel="share of noisy replays", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    auc = result["auroc"]
    title = (f"Feature noise tells FGSM adversarials from normal images: held-out AUROC {auc:.2f}" if auc >= 0.7
             else f"Feature noise barely separates FGSM adversarials from normal images here (AUROC {auc:.2f})")
    caption = (f"{result['draws']} noise draws per image and δ; detector δ = {result['delta']:g} at {result['layer']} "
               f"chosen on a calibration half. There, {result['normal_accuracy_at_best']:.0%} of normal replays stay "
               f"correct and {result['keep_false_at_best']:.0%} of adversarial replays keep the false label.")
    return _render(fig, "stability", title, caption)


def _bare_axes(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    """A rows × cols grid of image axes without ticks (labels and titles stay possible)."""
    fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [0, 1] → (H, W) grey, or (H, W, 3) colour for matplotlib."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    return np.clip(image, 0, 1)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def weight_change(changes: Mapping[str, Mapping[str, float]]) -> Figure:
    """Per layer ‖W − W₀‖ / ‖W₀‖ of each fine-tuned arm: which layers the treatment moved beyond the control."""
    layers = list(next(iter(changes.values())))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(layers) + 1.6))
    y = np.arange(len(layers))
    height = 0.8 / len(changes)
    for i, (arm, per_layer) in enumerate(changes.items()):
        ax.barh(y + (i - (len(changes) - 1) / 2) * height, [per_layer.get(n, 0.0) for n in layers], height,
                label=arm, color=RUN_COLOURS.get(arm))
    ax.set_yticks(y, layers, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="relative weight change ‖W − W₀‖ / ‖W₀‖")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    title = "Which layers the fine-tuning moved"
    if {"treated", "control"} <= set(changes):
        gain = {n: changes["treated"].get(n, 0.0) - changes["control"].get(n, 0.0) for n in layers}
        top = max(gain, key=lambda n: gain[n])
        title = f"The treatment moves {top} most beyond the control (+{gain[top]:.2f})"
    caption = "Relative change of each layer's weights from the original model, for the control and the treated arm."
    return _render(fig, "weight_change", title, caption)
