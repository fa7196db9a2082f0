"""Eq. 5–7 on token maps: one treatment step of a small ViT with the space-wise constraint at the patch grid and the
channel-wise constraint on embedding dimensions gives finite, non-zero terms; a token's receptive field is one patch
before the first attention block and the whole image after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeldoctor.core.receptive import receptive_field
from modeldoctor.doctor.annotation import MaskBank
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, treat_step
from modeldoctor.models.zoo import build_model
from toys import Items

pytestmark = pytest.mark.usefixtures("one_thread")


def test_receptive_field_of_a_token_is_its_patch_then_the_whole_image() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-vit", 3, 1, 28)
    assert receptive_field(model, "blocks.0.norm1", (1, 28, 28)) == 4  # per-token: one 4×4 patch
    assert receptive_field(model, "blocks.1.norm1", (1, 28, 28)) >= 28  # after attention: every patch


def test_one_treatment_step_of_a_tiny_vit_has_finite_nonzero_terms() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-vit", 3, 1, 28)
    g = torch.Generator().manual_seed(2)
    data = Items(torch.randn(6, 1, 28, 28, generator=g), torch.arange(6) % 3)
    data.ids = [str(i) for i in range(6)]  # type: ignore[attr-defined]
    masks = {str(i): torch.zeros(28, 28, dtype=torch.bool) for i in range(6)}
    for m in masks.values():
        m[8:20, 8:20] = True  # the object covers the centre 3×3 patches of the 7×7 grid
    bank = MaskBank.build(data, masks, list(range(6)), 28)
    layer = "blocks.1.norm1"  # the default layer: tokens 1+7x7, 32 embedding dimensions
    relevant = {layer: torch.zeros(3, 32, dtype=torch.bool)}
    relevant[layer][:, :8] = True
    cfg = TreatConfig(constraints=("space", "channel"), space_layers=[layer, "blocks.0.norm1"],
                      channel_layers=[layer], noise_draws=2, expansion=0)
    with TreatmentLoss(model, cfg, (1, 28, 28), relevant, bank) as loss_fn:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = treat_step(model, opt, loss_fn, data.x[:4], data.y[:4], torch.arange(4))
    assert np.isfinite(loss) and set(loss_fn.log) == {"space", "channel"}
    assert all(np.isfinite(v) and v > 0 for v in loss_fn.log.values()), loss_fn.log
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
