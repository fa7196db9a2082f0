"""doctor/explain.py: deviating kernels and background share by hand; the model is left as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from modeldoctor.analyses.gradcam import summed_derivative_map
from modeldoctor.doctor.diagnosis import Diagnosis, DiagnosisOptions, diagnose
from modeldoctor.doctor.explain import background_share, deviating_kernels, explain_image, shares
from toys import Toy, centre_masks, toy_batch


def test_shares_and_deviating_kernels_by_hand() -> None:
    assert shares(torch.tensor([1.0, 3.0])).tolist() == [0.25, 0.75]
    assert shares(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    rows = deviating_kernels(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 5.0]), top=2)
    # shares .75/.25/0 against .125/.25/.625: kernel 0 +.625, kernel 2 −.625 … kernel 1 0
    assert {r["kernel"] for r in rows} == {0, 2} and sorted(r["deviation"] for r in rows) == [-0.625, 0.625]
    one = deviating_kernels(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 1.0]), top=1)
    assert one[0]["kernel"] == 0 and one[0]["sample_share"] == 0.75 and one[0]["class_share"] == 0.25


def test_background_share_by_hand() -> None:
    dmap = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    obj = torch.tensor([[False, True], [False, True]])
    assert background_share(dmap, obj) == 1.0 / 8.0
    assert torch.isnan(torch.tensor(background_share(torch.zeros(2, 2), obj)))


def _diagnosed_toy(noise_draws: int, delta: float) -> tuple[nn.Module, torch.Tensor, Diagnosis]:
    torch.manual_seed(0)
    model = Toy()
    x, y, _ = toy_batch(9)
    options = DiagnosisOptions(noise_draws=noise_draws, samples_per_class=3, delta=delta, delta_mode="absolute",
                               require_correct=False)
    return model, x, diagnose(model, TensorDataset(x, y), ["conv1", "conv2"], options=options)


def test_noise_free_explanation_map_is_the_reports_summed_derivative_map() -> None:
    """One concept, one number: explain's Σ_k|∂ŷ/∂m_k| with J = 1, δ = 0 equals analyses.gradcam's."""
    model, x, diagnosis = _diagnosed_toy(noise_draws=1, delta=0.0)
    model.eval()
    for layer in ("conv1", "conv2"):
        found = explain_image(model, x[4], diagnosis, layer)
        plain = summed_derivative_map(model, x[4:5], layer, torch.tensor([found.prediction]))[0]
        assert found.derivative_map.shape == (8, 8) and torch.allclose(found.derivative_map, plain, atol=1e-6)


def test_explain_image_leaves_the_model_as_found_and_reads_the_object_mask() -> None:
    model, x, diagnosis = _diagnosed_toy(noise_draws=3, delta=0.1)
    model.train()
    model.bn.eval()
    model.fc.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    modes = [m.training for m in model.modules()]
    found = explain_image(model, x[0], diagnosis, label=2, object_mask=centre_masks(1)[0], top=3)
    assert [m.training for m in model.modules()] == modes and not model.fc.weight.requires_grad
    assert torch.equal(model.conv1.weight.grad, torch.ones_like(model.conv1.weight)) and model.conv2.weight.grad is None
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert found.layer == "conv2" and found.label == 2 and len(found.kernels_vs_true) == 3  # deepest layer by default
    assert found.object_area == 4 / 64
    dmap = found.derivative_map.tolist()  # the object is rows and columns 3-4 of the 8×8 map
    outside = sum(dmap[i][j] for i in range(8) for j in range(8) if not (3 <= i <= 4 and 3 <= j <= 4))
    assert found.background_share == pytest.approx(outside / sum(map(sum, dmap)), rel=1e-5)
    assert 0 <= found.background_share <= 1 and found.confidence >= found.runner_up_confidence
