"""``report(run_dir)``: one HTML page (plus one PNG per figure) from whatever outputs the run directory holds.

Sections appear only when their data exists.  Numbers come from the saved files; the model is re-loaded
(from the checkpoints the outputs name, or found beside them by weights hash) only for image overlays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_bytes, write_text
from modeldoctor.doctor.diagnosis import Diagnosis, LayerDiagnosis
from modeldoctor.doctor.discovery import kernels_for_mass
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import load_diagnosis, read_shortcut
from modeldoctor.io.documents import ABLATION, ANNOTATION_LIST, DECOMPOSITION, STABILITY, TREATMENT
from modeldoctor.report import figures
from modeldoctor.report.collect import RunFiles, find_outputs
from modeldoctor.report.html import Section, render, table
from modeldoctor.report.images import ModelSet, annotation_section, attention_sections, load_models
from modeldoctor.report.reliance import reliance_checks, reliance_section, shortcut_section

logger = logging.getLogger(__name__)

MAX_HEATMAPS = 4
ORDER = ["shortcut", "discovery", "attention", "annotate", "treatment", "reliance", "before-after", "explain", "stability",
         "decomposition", "ablation"]


@dataclass
class ReportResult:
    """The HTML page and the PNG of every figure on it (in page order)."""

    html: Path
    figures: list[Path]


def write_report(run_dir: str | Path, out: str | Path | None = None, images: bool = True,
                 max_images: int = 6) -> ReportResult:
    """Build ``report.html`` (default: inside ``run_dir``) and a ``figures/`` folder of PNGs beside it.

    ``images=False`` skips everything that needs the model (overlays, thumbnails); ``max_images`` bounds the
    images per overlay row.
    """
    if max_images < 1:
        raise UserError(f"max_images must be at least 1, got {max_images}")
    files = find_outputs(run_dir)
    target = Path(out) if out is not None else files.root / names.REPORT
    diagnosis = _load_diagnosis(files)
    models = load_models(files, diagnosis) if images else ModelSet()
    sections: list[Section] = []
    shortcut = read_shortcut(files.diagnosis) if files.diagnosis is not None else None
    if shortcut is not None:
        sections.append(shortcut_section(shortcut))
    if diagnosis is not None:
        sections.append(discovery_section(diagnosis))
    if models.original is not None and diagnosis is not None:
        sections += attention_sections(models, diagnosis, max_images)
    annotate = files.read(ANNOTATION_LIST)
    if annotate:
        sections.append(annotation_section(annotate, models))
    treat = files.read(TREATMENT)
    if treat:
        sections.append(treatment_section(treat, _class_names(diagnosis, models, treat)))
    checks = reliance_checks(models, (treat or {}).get("annotated_ids", (treat or {}).get("annotated")))
    if checks is not None and "treated" in checks:
        sections.append(reliance_section(checks, treat))
    stability = files.read(STABILITY)
    if stability:
        sections.append(stability_section(stability))
    if files.explain_pngs:
        sections.append(explain_section(files.explain_pngs))
    decompose = files.read(DECOMPOSITION)
    if decompose:
        sections.append(decomposition_section(decompose))
    ablate = files.read(ABLATION)
    if ablate:
        sections.append(ablation_section(ablate))
    sections.sort(key=lambda s: ORDER.index(s.key))
    cards = summary_cards(treat, diagnosis, stability, decompose)
    if shortcut is not None:
        cards.insert(0, (shortcut["verdict"]["label"], "shortcut check of the diagnosed model"))
    page = render("Model Doctor report", f"Outputs found under {files.root}", cards, sections)
    fig_dir = target.parent / names.FIGURES
    pngs = [write_bytes(fig_dir / names.figure(fig.name), fig.png) for section in sections for fig in section.figures]
    write_text(target, page)
    logger.info("%d sections, %d figures → %s", len(sections), len(pngs), target)
    return ReportResult(target, pngs)


def report(run_dir: str | Path, out: str | Path | None = None, images: bool = True, max_images: int = 6) -> Path:
    """:func:`write_report`, returning the HTML path."""
    return write_report(run_dir, out, images, max_images).html


def _load_diagnosis(files: RunFiles) -> Diagnosis | None:
    return load_diagnosis(files.diagnosis.parent) if files.diagnosis is not None else None


def _class_names(diagnosis: Diagnosis | None, models: ModelSet, treat: dict) -> list[str]:
    if diagnosis is not None:
        return list(diagnosis.class_names)
    if models.meta is not None:
        return list(models.meta.class_names)
    return [str(i) for i in range(len(treat["original"]["test"]["per_class"]))]


def discovery_section(diagnosis: Diagnosis) -> Section:
    """Discovery 1: class × kernel heatmaps per layer, kernels-for-90% vs depth, one sample vs its class."""
    layers = sorted(diagnosis.layers.values(), key=lambda ln: ln.depth)
    section = Section("discovery", "Discovery 1: which kernels each class relies on",
                      "Correlation ā between every class and every kernel (Eq. 4): the mean absolute derivative of the "
                      f"class score with respect to each feature map, over up to {diagnosis.options.samples_per_class} "
                      "confident, correctly classified training images per class, with "
                      f"{diagnosis.options.noise_draws} noise draws each.")
    for layer in reversed(_spread(layers, MAX_HEATMAPS)):  # the deepest first: where the paper's claim is strongest
        abar = layer.correlation.numpy()
        section.figures.append(figures.correlation_heatmap(abar, diagnosis.class_names, layer.name))
    if len(layers) > MAX_HEATMAPS:
        section.notes.append(f"Heatmaps for {MAX_HEATMAPS} of the {len(layers)} diagnosed layers (evenly spread, "
                             "always the deepest); all are in diagnosis.safetensors.")
    if len(layers) > 1:
        counts = [kernels_for_mass(ln.correlation.abs()).tolist() for ln in layers]
        section.figures.append(figures.mass_vs_depth([ln.name for ln in layers], counts, [ln.channels for ln in layers]))
    profile = _best_profile(diagnosis, layers[-1])
    if profile is not None:
        c, p = profile
        section.figures.append(figures.sample_vs_average(
            layers[-1].profiles[c, p].numpy(), layers[-1].correlation[c].numpy(), diagnosis.class_names[c],
            layers[-1].name, float(diagnosis.profile_confidence[c, p])))
    return section


def _spread(items: list, n: int) -> list:
    """At most ``n`` items evenly spread over ``items``, always including the last."""
    if len(items) <= n:
        return items
    picks = np.linspace(len(items) - 1, 0, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def _best_profile(diagnosis: Diagnosis, layer: LayerDiagnosis) -> tuple[int, int] | None:
    """(class, slot) of the most confident single-sample profile kept in the diagnosis, if any."""
    conf = diagnosis.profile_confidence.clone()
    conf[(diagnosis.profile_index < 0) | layer.profiles.isnan().any(-1)] = float("-inf")
    if conf.numel() == 0 or not bool(conf.isfinite().any()):
        return None
    flat = int(conf.argmax())
    return flat // conf.shape[1], flat % conf.shape[1]


def _candidate_epochs(candidate: dict[str, Any]) -> str:
    if candidate.get("stopped_after"):
        run = f"stopped after {candidate['stopped_after']}: trailing the re-fit head"
    elif candidate.get("trial_epochs"):
        run = f"{candidate['trial_epochs']} (trial)"
    else:
        run = "full run"
    per_epoch = candidate.get("select_swap_per_epoch")
    return f"{run} ({' → '.join(f'{100 * a:.1f}' for a in per_epoch)})" if per_epoch else run


def _accuracy_runs(treat: dict, split: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    runs = {}
    for name in ("original", "control", "treated"):
        m = treat.get(name)
        if not m or split not in m:
            continue
        std = (m.get("std") or {}).get(split, {}).get("per_class")
        runs[name] = (np.asarray(m[split]["per_class"], dtype=float), None if std is None else np.asarray(std, float))
    return runs


def treatment_section(treat: dict, class_names: list[str]) -> Section:
    """Fig. 4: per-class accuracy original / control / treated with the seed spread, swap accuracy, weight change."""
    seeds = max(int((treat.get(n) or {}).get("seeds", 1)) for n in ("original", "control", "treated"))
    select = treat.get("select", "val")
    chosen = {"swap": "the background-swap composites of held-out annotated images", "val": "the validation split",
              "last": "nothing (the last epoch is kept)"}.get(select, select)
    verdict = treat.get("verdict") or {}
    lead = f"{verdict['message']} " if verdict.get("message") else ""
    section = Section("treatment", "Treatment: accuracy before and after, against a matched control",
                      lead + "The control is the same fine-tuning (weights, data order, optimiser, epochs, seed) "
                      "without the constraints, so any difference between treated and control is the constraints' effect. "
                      f"Both arms chose their epoch on {chosen}; the test split only judges. Swap accuracy: each "
                      "held-out annotated object pasted on other classes' backgrounds — a model that reads the "
                      "background follows the background's class, so a shortcut shows as a low swap accuracy (validation "
                      "accuracy is no reference: it may carry the shortcut too).")
    splits = [s for s in ("test", "swap", "val") if all(s in (treat.get(n) or {s: 0}) for n in ("original", "treated"))]
    rows = []
    for name in ("original", "control", "treated"):
        m = treat.get(name)
        if not m:
            continue
        std = m.get("std") or {}
        rows.append([name] + [_pct(m[s]["accuracy"], (std.get(s) or {}).get("accuracy")) if s in m else "–"
                              for s in splits])
    section.tables.append(table(["model"] + [f"{s} accuracy" for s in splits], rows,
                                f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"))
    candidates = treat.get("candidates") or []
    if candidates:
        chosen_name = verdict.get("candidate")
        section.tables.append(table(
            ["candidate", "swap accuracy (selection half)", "epochs (swap accuracy after each)", "seconds"],
            [[c["name"] + (f" (head of the {c['head_of']})" if c.get("head_of") else "")
              + (" (chosen)" if c["name"] == chosen_name else ""), _pct(c["select_swap"], None),
              _candidate_epochs(c), f"{c['seconds']:.0f}"] for c in candidates],
            "treatment candidates tried, judged on the swap accuracy of held-out annotated objects on held-out "
            "backgrounds (test accuracy chooses nothing); the verdict uses the other half of those objects"))
    section.figures.append(figures.per_class_accuracy(class_names, _accuracy_runs(treat, "test"), "test", seeds))
    if treat.get("weight_change"):
        section.figures.append(figures.weight_change(treat["weight_change"]))
    return section


def stability_section(result: dict) -> Section:
    """Fig. 3: noise keeps normal samples and moves adversarials back; the detector's held-out AUROC."""
    section = Section("stability", "Discovery 2: are adversarial samples isolated in feature space?",
                      "Uniform(−δ, δ) noise added to a layer's feature map of correctly classified test images and of "
                      f"their FGSM adversarials (ε = {result['fgsm']['eps']:g}, {result['fgsm']['adversarials']} "
                      "successful). The detector scores an image by how often noise changes its prediction.")
    section.figures.append(figures.stability_curves(result))
    found = result.get("detectors")
    if found:
        noise, squeezing = found["noise_choice"], found["squeezing_choice"]
        rows = [["feature noise (Discovery 2), best single score", f"{found['auroc_noise']:.3f}",
                 f"{noise['score']} score at {noise['layer']}, δ = {noise['relative_delta']:g}·std"],
                ["feature noise, flip score only", f"{found['auroc_noise_flip']:.3f}",
                 f"{found['flip_choice']['layer']}, δ = {found['flip_choice']['relative_delta']:g}·std"],
                ["feature squeezing (Xu et al. 2018)", f"{found['auroc_feature_squeezing']:.3f}",
                 f"{squeezing['bits']} bits, median {squeezing['median']}"]]
        fit = found.get("combined_fit")  # absent from stability.json files written before the combiner
        if fit:
            rows.insert(0, ["feature noise (Discovery 2), combined", f"{found['auroc_noise_combined']:.3f}",
                            f"logistic regression on {', '.join(fit['statistics'])} at {len(found['layers'])} layers, "
                            f"δ ∈ {{{', '.join(f'{d:g}' for d in fit['relative_deltas'])}}}·std, C = {fit['C']:.3g}"])
        section.tables.append(table(
            ["detector", "test AUROC", "settings (chosen on validation adversarials)"], rows,
            f"{found['attack'].upper()} ε = {found['eps']:g}: {found['adversarials']['test']} successful test "
            f"adversarials ({found['success_rate']['test']:.0%} of correct images)"))
    return section


def explain_section(paths: list[Path]) -> Section:
    """The overlays `modeldoctor explain` wrote, as they are."""
    section = Section("explain", "Single-image explanations",
                      "Images explained with `modeldoctor explain`: the image and its summed derivative map.")
    for path in paths:
        section.figures.append(figures.Figure(path.stem, path.stem.removeprefix("explain-"),
                                              f"From {path.name}.", path.read_bytes()))
    return section


def decomposition_section(summary: dict) -> Section:
    section = Section("decomposition", "Class-specific features in the final layer (Decomposing the Deep)",
                      f"Final layer {summary['layer']}: {summary['features']} features, {summary['classes']} classes; "
                      f"k₁ = {summary['k1']}, k₂ = {summary['k2']}.")
    section.figures.append(figures.decomposition(summary))
    if summary.get("selection"):
        section.figures.append(figures.decomposition_k_curve(summary))
    if summary.get("protocol"):
        p = summary["protocol"]
        section.notes.append(f"Retraining: {p['parameters']} parameters, {p['epochs']} epoch(s), SGD lr {p['lr']:g}, "
                             f"{p['schedule']}, {p['checkpoint']}; from the paper: {'; '.join(p['from_paper'])}.")
    mac = summary.get("multiply_adds")
    if mac:
        section.notes.append("Final-layer multiply-adds: " + ", ".join(f"{k} {v:g}" for k, v in mac.items()))
    return section


def ablation_section(result: dict) -> Section:
    section = Section("ablation", "Unit deletion: which units help and which hurt",
                      f"Each unit of {result['layer']} removed in turn (output set to zero); accuracy change on the "
                      f"{result['rank_split']} split (baseline {result['baseline']['accuracy']:.1%}).")
    section.figures.append(figures.ablation_ranking(result["units"], result["layer"]))
    rows = [[label, e["unit"], f"{100 * e['delta']:+.2f}", f"{e['delta_loss']:+.4f}"]
            for label, key in (("worst", "worst"), ("best", "best")) for e in result["ranking"][key]]
    section.tables.append(table(["rank list", "unit", "Δ accuracy (points)", "Δ loss"], rows,
                                "worst: removal raises accuracy most (or lowers the loss most); best: removal costs most"))
    return section


def summary_cards(treat: Any, diagnosis: Any, stability: Any, decompose: Any) -> list[tuple[str, str]]:
    cards = []
    if treat:
        for name in ("original", "control", "treated"):
            if treat.get(name):
                cards.append((f"{100 * treat[name]['test']['accuracy']:.1f}%", f"{name} test accuracy"))
    if diagnosis is not None:
        cards.append((str(len(diagnosis.layers)), "layers diagnosed"))
    if stability:
        cards.append((f"{stability['auroc']:.2f}", "adversarial detector AUROC"))
    if decompose:
        cards.append((f"{decompose['r_A']:.2f}", "r_A (decomposed / full)"))
    return cards


def _pct(value: float, std: float | None) -> str:
    return f"{100 * value:.2f}%" + (f" ± {100 * std:.2f}" if std else "")
