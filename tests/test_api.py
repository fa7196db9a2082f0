"""The Python API: lazy exports, and treat() on model objects leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modeldoctor as md
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.models.checkpoint import weights_hash
from modeldoctor.models.zoo import SimpleCNN


def test_every_exported_name_resolves() -> None:
    for name in md.__all__:
        if name != "ModelDoctorCallback":  # importing Lightning takes seconds; tests/test_lightning.py covers it
            assert getattr(md, name) is not None, name
    with pytest.raises(AttributeError):
        md.no_such_function  # noqa: B018


def test_readme_flow_on_a_users_own_model() -> None:
    g = torch.Generator().manual_seed(0)
    n, size = 90, 16
    labels = np.arange(n) % 3
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i, c in enumerate(labels):
        masks[i, 2 + 4 * int(c):7 + 4 * int(c), 5:11] = True
    images = (0.3 * torch.rand(n, 1, size, size, generator=g)).masked_fill(masks.unsqueeze(1), 1.0)
    ids = [f"img{i}" for i in range(n)]
    data = bundle_from_tensors("mine", images, labels, ids, ["a", "b", "c"],
                               [np.arange(0, 60), np.arange(60, 75), np.arange(75, 90)], None,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})
    torch.manual_seed(0)
    model = SimpleCNN(3, 1, width=4)
    md.fit(model, data.train, data.val, data.num_classes, md.TrainConfig(epochs=2, batch_size=16, lr=0.05))
    diagnosis = md.diagnose(model, data.train, layers="all", samples_per_class=4, noise_draws=2,
                            require_correct=False)
    todo = md.annotation_list(model, data, per_class=5)
    assert sorted(todo["per_class"]) == ["a", "b", "c"] and all(len(v) == 5 for v in todo["per_class"].values())
    before = weights_hash(model)
    result = md.treat(model, diagnosis, data, annotate_per_class=5, epochs=1, batch_size=16, noise_draws=2)
    assert weights_hash(model) == before  # the user's model is untouched
    assert weights_hash(result.treated) != weights_hash(result.control) != before
    assert len(result.annotated) == 12 and len(result.held_out) == 3  # a quarter of each class kept for the swap test
    summary = result.summary()
    assert set(summary) >= {"original", "control", "treated", "lambdas", "weight_change", "select"}
    assert summary["select"] == "swap" and summary["lambdas"]["space"] > 0
    assert all(0 <= summary[arm][split]["accuracy"] <= 1 for arm in ("original", "control", "treated")
               for split in ("val", "test", "swap"))
    assert set(summary["weight_change"]) == {"control", "treated"}
