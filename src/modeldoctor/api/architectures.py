"""``check_architecture``: does a model spec go through the whole pipeline (train → diagnose → treat)?

One optimiser step of training, a diagnosis of the default layer and one step of the treatment (space-wise at its
default layer and channel-wise at the default layer) on a few generated images with object masks, at the
architecture's probed minimum input size (at least ``floor`` pixels).  Used by the slow architecture test and by
``benchmarks/architectures.py``, whose JSON feeds the table in docs/architectures.md.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from modeldoctor.api.treatment import treat
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import default_layer
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.models.zoo import build_model, min_input_size
from modeldoctor.training import TrainConfig, fit

# timm families checked besides every torchvision classification builder (transformers read as token maps,
# core/tokens.py); the full timm sweep of layouts is tests/test_token_architectures.py.
TIMM_FAMILIES = ["timm:convnext_nano", "timm:regnety_002", "timm:efficientnet_b0", "timm:mobilenetv3_small_100",
                 "timm:resnet18", "timm:vit_tiny_patch16_224", "timm:deit_tiny_distilled_patch16_224",
                 "timm:swin_tiny_patch4_window7_224", "timm:maxvit_tiny_tf_224", "timm:efficientformer_l1"]


# The smallest member of every torchvision family (and variant with its own blocks: MobileNet-V2/V3, EfficientNet
# B/V2, RegNet X/Y), for a check that fits in CI.
# The fixed-224-px transformers vit_b_16 and maxvit_t (and timm's MaxViT) are left to the full sweep: on two CPU
# cores one of them alone ran out of memory or past 600 s; the tiny timm ViT / DeiT and swin_v2_t stand for them.
FAMILY_REPRESENTATIVES = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
                          "googlenet", "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
                          "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5",
                          "squeezenet1_1", "swin_v2_t", "vgg11_bn", "wide_resnet50_2"]
HEAVY_TIMM = {"timm:maxvit_tiny_tf_224"}
CLASSES = 3
# Above this many parameters the check runs one image per class and split instead of four: ViT-L/H's double
# backward through every attention block at 12 images does not fit a 24 GB machine.
LARGE_MODEL = 200_000_000


def architecture_specs(representatives: bool = False) -> list[str]:
    """Every torchvision classification builder, then :data:`TIMM_FAMILIES`; with ``representatives`` only
    :data:`FAMILY_REPRESENTATIVES` and the timm families but the heavy ones (the CI check)."""
    from torchvision import models

    if representatives:
        return FAMILY_REPRESENTATIVES + [spec for spec in TIMM_FAMILIES if spec not in HEAVY_TIMM]
    return sorted(models.list_models(module=models)) + TIMM_FAMILIES


@dataclass
class ArchitectureCheck:
    """What happened to one spec; a stage is ``"pass"``, ``"refused"``, ``"fail: …"`` or ``"-"`` (not reached)."""

    spec: str
    min_input: int | None = None
    input_size: int | None = None
    default_layer: str | None = None
    train: str = "-"
    diagnose: str = "-"
    treat: str = "-"
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.train == self.diagnose == self.treat == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def squares(size: int, channels: int = 3, per_class: int = 4, classes: int = CLASSES) -> DataBundle:
    """``classes`` × ``per_class`` images per split: a bright square at a class-specific place on noise, with its
    exact object mask (seeded, generated)."""
    g = torch.Generator().manual_seed(0)
    n = 3 * classes * per_class
    images = torch.rand(n, channels, size, size, generator=g) * 0.4
    labels = np.arange(n) % classes
    side = max(1, size // 3)
    masks: dict[str, torch.Tensor] = {}
    ids = [f"sq-{i:03d}" for i in range(n)]
    for i, c in enumerate(labels):
        top = int(c) * (size - side) // max(1, classes - 1)
        images[i, :, top:top + side, top:top + side] = 1.0
        masks[ids[i]] = torch.zeros(size, size, dtype=torch.bool)
        masks[ids[i]][top:top + side, top:top + side] = True
    parts = [np.arange(k * classes * per_class, (k + 1) * classes * per_class) for k in range(3)]
    return bundle_from_tensors("squares", images, labels, ids, [str(c) for c in range(classes)], parts, None, masks)


def check_architecture(spec: str, floor: int = 32, in_channels: int = 3, per_class: int | None = None
                       ) -> ArchitectureCheck:
    """Run ``spec`` through train (1 step) → diagnose (default layer, T = 1, J = 2) → treat (1 step, space +
    channel, no control) on :func:`squares` with ``per_class`` images per class and split (default 4; 1 above
    :data:`LARGE_MODEL` parameters); every failure is recorded, not raised.  A model without any layer that yields a
    spatial feature map is ``"refused"`` at build."""
    check = ArchitectureCheck(spec)
    started = time.perf_counter()
    stage = "train"
    try:
        try:
            check.min_input = min_input_size(spec, in_channels)
            check.input_size = max(check.min_input, floor)
            torch.manual_seed(0)
            model = build_model(spec, CLASSES, in_channels, check.input_size)
            large = sum(p.numel() for p in model.parameters()) > LARGE_MODEL
            data = squares(check.input_size, in_channels, per_class=per_class or (1 if large else 4))
        except UserError as exc:
            check.train = check.diagnose = check.treat = "refused"
            check.note = str(exc)
            return check
        check.default_layer = default_layer(model, data.input_shape)
        # SGD: one momentum buffer, where Adam keeps two (RegNet-Y 128GF has 644 M parameters)
        cfg = TrainConfig(epochs=1, batch_size=len(data.train), lr=1e-3, optimizer="sgd", seed=0)
        fit(model, data.train, data.val, data.num_classes, cfg)
        check.train, stage = "pass", "diagnose"
        diagnosis = diagnose(model, data.train, check.default_layer, noise_draws=2, samples_per_class=1,
                             require_correct=False, batch_size=len(data.train))
        check.diagnose, stage = "pass", "treat"
        treat(model, diagnosis, data, constraints=("space", "channel"), epochs=1, batch_size=len(data.train),
              control=False, annotate_per_class=None, train_config=cfg, noise_draws=2, mix_annotated=0,
              holdout_annotated=0.0, select="last")
        check.treat = "pass"
    except Exception as exc:  # noqa: BLE001 — the point is to record any architecture's failure
        setattr(check, stage, f"fail: {type(exc).__name__}")
        check.note = f"{exc}".splitlines()[0][:200] if str(exc) else traceback.format_exc(limit=1)
    finally:
        check.seconds = round(time.perf_counter() - started, 2)
    return check
