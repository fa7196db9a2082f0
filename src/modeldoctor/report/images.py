"""Report sections that need the model and the data: derivative-map overlays, Grad-CAM, thumbnails.

The original checkpoint is the one ``treat.json`` names, or any ``*.pt`` under the run directory whose
weights hash equals the diagnosis's; ``treated.pt`` / ``control.pt`` sit beside ``treat.json``.  The data is
re-loaded from the spec the checkpoint records, normalised with the checkpoint's statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeldoctor.analyses.gradcam import grad_cam, summed_derivative_map
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.doctor.diagnosis import Diagnosis
from modeldoctor.doctor.explain import background_share
from modeldoctor.io import names
from modeldoctor.io.documents import TREATMENT
from modeldoctor.io.loading import data_for
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint
from modeldoctor.report import figures
from modeldoctor.report.collect import RunFiles
from modeldoctor.report.html import Section, table
from modeldoctor.training import predict

logger = logging.getLogger(__name__)

MAX_BACKGROUND_IMAGES = 500
CLEAR_DIFFERENCE = 0.01  # background shares closer than one percentage point are called "similar" in titles


@dataclass
class ModelSet:
    """The models the run produced (``None`` where absent) and the data they were trained on."""

    original: nn.Module | None = None
    meta: CheckpointMeta | None = None
    bundle: DataBundle | None = None
    arms: dict[str, nn.Module] = field(default_factory=dict)  # "control", "treated"

    def loaded(self) -> tuple[nn.Module, DataBundle]:
        """The original model and its data; only call when :func:`load_models` found them."""
        if self.original is None or self.bundle is None:
            raise UserError("the run directory has no loadable original checkpoint; run without image figures")
        return self.original, self.bundle


def load_models(files: RunFiles, diagnosis: Diagnosis | None) -> ModelSet:
    """Find and load the original (and treated / control) checkpoints and their data; empty when impossible."""
    treat_path = files.path(TREATMENT)
    treat = files.read(TREATMENT)
    named: list[Path] = []  # the checkpoint treat.json says it treated: the original by definition
    if treat_path is not None and treat is not None:
        given = Path(treat.get("checkpoint", ""))
        named = [p for p in (given, files.root / given, treat_path.parent / given) if p.match(names.CHECKPOINT_PATTERN)]
    arm_paths = {arm: treat_path.parent / names.arm_checkpoint(arm) for arm in ("control", "treated")} if treat_path else {}
    others = [p for p in files.checkpoints if p not in arm_paths.values()]
    wanted = diagnosis.weights_sha256 if diagnosis is not None else None
    models = ModelSet()
    try:
        for path in named + others:
            if not path.is_file():
                continue
            model, meta = load_checkpoint(path)
            if path in named or wanted is None or meta.weights_sha256 == wanted:
                models.original, models.meta = model, meta
                break
        if models.original is None:
            return models
        assert models.meta is not None  # set together with models.original
        models.bundle = data_for(models.meta, None)
        for arm, path in arm_paths.items():
            if path.is_file():
                models.arms[arm] = load_checkpoint(path)[0]
    except UserError as exc:
        logger.warning("skipping image figures (%s)", exc)
        return ModelSet()
    return models


def attention_sections(models: ModelSet, diagnosis: Diagnosis, max_images: int) -> list[Section]:
    """Fig. 2b (high vs low confidence with summed derivative maps), background share, and Fig. 5 before/after."""
    original, bundle = models.loaded()
    layer = max(diagnosis.layers.values(), key=lambda ln: ln.depth).name
    test = bundle.test
    names = bundle.class_names
    logits, labels = predict(original, test)
    pred = logits.argmax(1)
    conf_true = logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    high = [int(i) for i in torch.argsort(torch.where(pred == labels, -conf_true, 1.0), stable=True)[:max_images]]
    low = [int(i) for i in torch.argsort(conf_true, stable=True)[:max_images]]

    def block(index: list[int], kind: str) -> list[tuple]:
        raw = [test.raw(i).numpy() for i in index]
        maps = list(summed_derivative_map(original, torch.stack([test[i][0] for i in index]), layer).numpy())
        titles = [f"{names[int(labels[i])]}→{names[int(pred[i])]}  p={float(conf_true[i]):.2f}" for i in index]
        return [(f"{kind}\nimage", raw, [None] * len(raw), titles), (f"{kind}\nΣ|∂ŷ/∂m|", raw, maps, [""] * len(raw))]

    attention = Section("attention", "Where the model looks: confident vs hesitant test images",
                        f"Summed derivative map Σ_k |∂ŷ/∂m_k| of the predicted class at {layer}, upsampled onto the "
                        "image (bright = the class score is most sensitive there).")
    shares = _background_shares(models, layer, high + low)
    claim = "Confident and hesitant test images, and where the model looks"
    if shares is not None:
        by_image = dict(zip(shares[2], shares[0]["original"]))
        hi, lo = (float(np.nanmean([by_image.get(i, np.nan) for i in group])) for group in (high, low))
        claim = (f"Hesitant predictions put more of the map on the background ({lo:.0%}) than confident ones ({hi:.0%})"
                 if lo > hi + CLEAR_DIFFERENCE else
                 f"Confident ({hi:.0%}) and hesitant ({lo:.0%}) images put similar shares on the background"
                 if abs(lo - hi) <= CLEAR_DIFFERENCE else
                 f"Confident predictions put more of the map on the background ({hi:.0%}) than hesitant ones ({lo:.0%})")
    attention.figures.append(figures.image_grid(
        "confidence_overlays", claim, "Top: the most confident correct test images; bottom: the least confident "
        "(paper Fig. 2b). Titles: true→predicted class, p = probability of the true class; each map is min-max "
        "scaled (strong: opaque yellow; its minimum: transparent).", block(high, "confident") + block(low, "hesitant")))
    sections = [attention]
    if shares is not None:
        attention.figures.append(figures.background_share("background_share", {"original": shares[0]["original"]},
                                                          shares[1]))
    if models.arms:
        sections.append(_before_after(models, layer, low, names, shares))
    return sections


def _before_after(models: ModelSet, layer: str, index: list[int], names: list[str],
                  shares: tuple[dict[str, np.ndarray], float, list[int]] | None) -> Section:
    """Fig. 5: the same hesitant test images, maps of original / control / treated, and Grad-CAM."""
    original, bundle = models.loaded()
    test = bundle.test
    x = torch.stack([test[i][0] for i in index])
    target = test.labels[index]
    raw = [test.raw(i).numpy() for i in index]
    blank = [""] * len(index)
    rows = [("image", raw, [None] * len(raw), [f"true {names[int(t)]}" for t in target])]
    for name, model in [("original", original)] + sorted(models.arms.items()):
        rows.append((f"{name}\nΣ|∂ŷ/∂m|", raw, list(summed_derivative_map(model, x, layer, target).numpy()), blank))
    for name, model in [("original", original)] + [(n, m) for n, m in models.arms.items() if n == "treated"]:
        rows.append((f"{name}\nGrad-CAM", raw, list(grad_cam(model, x, None, target).numpy()), blank))
    section = Section("before-after", "Before and after treatment: the same hesitant images",
                      f"Maps of the true class at {layer} for the original, control and treated models, and Grad-CAM "
                      "on the last rectified feature maps (the paper's Fig. 5); a blank Grad-CAM panel means no "
                      "positive evidence for the true class anywhere (ReLU of a negative sum), common on these hesitant "
                      "images. Each map is min-max scaled (strong: opaque yellow; its minimum: transparent).")
    claim = "Summed derivative maps Σ|∂ŷ/∂m| (paper Fig. 5) of the same images before and after treatment"
    if shares is not None and "treated" in shares[0]:
        before, after = float(np.mean(shares[0]["original"])), float(np.mean(shares[0]["treated"]))
        claim = (f"Summed derivative maps Σ|∂ŷ/∂m| (paper Fig. 5): {before:.0%} of the map on the background before, "
                 f"{after:.0%} after — this map ignores the weights before {layer}, so it is not a reliance measure "
                 "(see the reliance section)")
    section.figures.append(figures.image_grid("before_after", claim, "Rows: model and map; columns: the least "
                                              "confident test images of the original model.", rows))
    if shares is not None:
        by_model, area, _ = shares
        section.figures.append(figures.background_share("background_share_treated", by_model, area))
        section.tables.append(table(["model", "mean background share of Σ|∂ŷ/∂m| (paper's map)", "images"],
                                    [[n, f"{float(np.mean(v)):.1%}", len(v)] for n, v in by_model.items()]))
    return section


def _background_shares(models: ModelSet, layer: str, include: list[int]
                       ) -> tuple[dict[str, np.ndarray], float, list[int]] | None:
    """Per test image with a mask (the first 500, plus ``include``): the summed derivative map's mass outside the
    object / its total, per model; the background's share of the pixels; and the test indices used."""
    original, bundle = models.loaded()
    test, masks = bundle.test, bundle.masks
    index = sorted(set(range(min(len(test), MAX_BACKGROUND_IMAGES))) | set(include))
    index = [i for i in index if test.ids[i] in masks]
    if not index:
        return None
    x = torch.stack([test[i][0] for i in index])
    target = test.labels[index]
    obj = torch.stack([masks[test.ids[i]] for i in index]).bool()
    if obj.shape[-2:] != x.shape[-2:]:
        return None
    result = {}
    for name, model in [("original", original)] + sorted(models.arms.items()):
        maps = torch.cat([summed_derivative_map(model, xb, layer, tb) for xb, tb in zip(x.split(128), target.split(128))])
        result[name] = np.array([background_share(m, o) for m, o in zip(maps, obj)])
    return result, float((~obj).float().mean()), index


def annotation_section(annotate: dict, models: ModelSet) -> Section:
    """The images to annotate first: per class the lowest-confidence training images (thumbnails if possible)."""
    per_class = annotate["per_class"]
    section = Section("annotate", "Images to annotate first",
                      "Per class, the training images whose true class the model trusts least. An object mask (or "
                      "box) on these gives the space-wise constraint the most to correct.")
    split = models.bundle.train if models.bundle is not None else None
    if split is not None:
        rows = {}
        for cname, items in per_class.items():
            thumbs = [(split.raw(split.index_of[e["id"]]).numpy(), f"p={e['confidence']:.2f}")
                      for e in items[:10] if e["id"] in split.index_of]
            if thumbs:
                rows[f"class {cname}"] = thumbs
        if rows:
            section.figures.append(figures.thumbnails(
                "annotate", "The least confident training images of each class",
                "p = the model's probability of the true class; the full list is in annotate.json.", rows))
    names = models.meta.class_names if models.meta is not None else None
    body = [[cname, len(items), ", ".join(e["id"] for e in items[:5]) + (" …" if len(items) > 5 else ""),
             ", ".join(names[e["predicted"]] if names else str(e["predicted"]) for e in items[:5])]
            for cname, items in per_class.items()]
    section.tables.append(table(["class", "images listed", "first ids", "predicted as"], body))
    return section
