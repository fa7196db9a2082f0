"""doctor/explain.py: deviating kernels and background share by hand; the model is left as found."""

from __future__ import annotations

import torch

from modeldoctor.doctor.explain import background_share, deviating_kernels, shares


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
