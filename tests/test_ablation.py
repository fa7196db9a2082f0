import csv
import functools
import json

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from modeldoctor.analyses import ablation
from modeldoctor.analyses.ablation import (
    ablate_units,
    intervention_table,
    rank_units,
    scale_unit_outputs,
    scale_unit_weights,
    unit_deletion,
    unit_deletion_one_at_a_time,
    worst_units,
)
from modeldoctor.cli.app import main
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import FeatureCapture
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint, weights_hash
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, fit

LAYER = "features.11"  # simple-cnn's last conv


def _spread(split, n):
    return Subset(split, [int(i * len(split) / n) for i in range(n)])


@pytest.fixture(scope="module")
def trained(mnist5k):
    """simple-cnn-narrow fitted briefly, so per-class accuracies differ between units."""
    torch.manual_seed(0)
    model = build_model("simple-cnn-narrow", 10, 1)
    fit(model, _spread(mnist5k.train, 500), _spread(mnist5k.val, 20), 10,
        TrainConfig(epochs=3, batch_size=16, optimizer="adam", lr=3e-3))
    return model


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_batched_deletion_equals_one_at_a_time(trained, mnist5k):
    val = _spread(mnist5k.val, 60)
    units = list(range(0, 32, 3))
    batched = unit_deletion(trained, val, 10, LAYER, units, batch_size=16, max_elements=5_000)  # 2 units a chunk
    single = unit_deletion_one_at_a_time(trained, val, 10, LAYER, units)
    assert batched.units == single.units == units
    assert torch.equal(batched.per_class, single.per_class)
    assert torch.equal(batched.accuracy, single.accuracy)
    assert torch.allclose(batched.loss, single.loss, atol=1e-5)
    assert batched.baseline_accuracy == single.baseline_accuracy
    assert batched.delta.abs().max() > 0  # some unit matters, so the comparison is not vacuous


@pytest.mark.parametrize("fallback", [False, True])
def test_batched_deletion_with_skip_connections(mnist5k, monkeypatch, fallback):
    if fallback:  # the hook path replay.py takes for models torch.fx cannot trace
        monkeypatch.setattr(ablation, "NoiseReplay", functools.partial(NoiseReplay, force_fallback=True))
    torch.manual_seed(1)
    model = build_model("resnet20", 10, 1).eval()
    data = _spread(mnist5k.val, 8)
    batched = unit_deletion(model, data, 10, "layer2.1.conv1", units=[0, 5, 31], batch_size=4)
    single = unit_deletion_one_at_a_time(model, data, 10, "layer2.1.conv1", units=[0, 5, 31])
    assert torch.allclose(batched.loss, single.loss, atol=1e-5)
    assert torch.equal(batched.per_class, single.per_class)


def test_ablated_unit_is_zero_downstream_and_model_restored(trained, mnist5k):
    x = torch.stack([mnist5k.val[i][0] for i in range(8)])
    trained.train()
    before = weights_hash(trained)
    with torch.no_grad(), FeatureCapture(trained, [LAYER, "features.12"]) as clean:
        trained.eval()
        trained(x)
    with ablate_units(trained, LAYER, [3, 7]), torch.no_grad(), FeatureCapture(trained, [LAYER, "features.12"]) as cap:
        trained(x)
    out, bn = cap.captured[LAYER], cap.captured["features.12"]
    assert out[:, [3, 7]].abs().max() == 0
    assert torch.equal(out[:, :3], clean.captured[LAYER][:, :3])
    assert bn[:, 3].std() < 1e-6 and bn[:, 3].abs().max() > 0  # BN maps the removed unit to a constant
    trained.train()
    unit_deletion(trained, _spread(mnist5k.val, 20), 10, LAYER)
    assert trained.training and all(m.training for m in trained.modules())
    assert weights_hash(trained) == before and _no_hooks(trained)
    trained.eval()


def test_scaling_weights_and_outputs_then_restore(trained, mnist5k):
    x = torch.stack([mnist5k.val[i][0] for i in range(8)])
    conv = trained.get_submodule(LAYER)
    before, w0 = weights_hash(trained), conv.weight.detach().clone()
    with torch.no_grad():
        with scale_unit_weights(trained, LAYER, [2, 4], 3.0):
            assert torch.equal(conv.weight[[2, 4]], w0[[2, 4]] * 3.0)
            assert torch.equal(conv.weight[[0, 1, 3]], w0[[0, 1, 3]])
            by_weight = trained(x)
        with scale_unit_outputs(trained, LAYER, [2, 4], 3.0):
            by_output = trained(x)
    assert torch.allclose(by_weight, by_output, atol=1e-4)  # the conv has no bias: the two coincide
    assert weights_hash(trained) == before
    with pytest.raises(RuntimeError), scale_unit_weights(trained, LAYER, [1], 0.5):
        raise RuntimeError("interrupted")
    assert weights_hash(trained) == before and _no_hooks(trained)


def test_ranking_and_intervention_table(trained, mnist5k):
    val, test = _spread(mnist5k.val, 40), _spread(mnist5k.test, 40)
    result = unit_deletion(trained, val, 10, LAYER)
    ranking = rank_units(result, [str(c) for c in range(10)], top=3)
    order = worst_units(result)
    assert ranking["worst"][0]["unit"] == result.units[order[0]]
    assert result.delta[order[0]] == result.delta.max() and result.delta[order[-1]] == result.delta.min()
    for per in ranking["per_class"].values():
        assert all(e["delta"] < 0 for e in per["helping"]) and all(e["delta"] > 0 for e in per["hurting"])
        assert [e["delta"] for e in per["helping"]] == sorted(e["delta"] for e in per["helping"])
    before = weights_hash(trained)
    table = intervention_table(trained, {"val": val, "test": test}, 10, LAYER, result, k=2, constants=[2.0])
    assert weights_hash(trained) == before and _no_hooks(trained)
    assert [r["intervention"] for r in table[:3]] == ["none", "delete worst-k", "delete best-k"]
    assert len(table) == 3 + 8
    assert table[0]["accuracy"]["val"] == pytest.approx(result.baseline_accuracy)
    deleted_best = table[2]
    assert deleted_best["units"] == [ranking["best"][0]["unit"], ranking["best"][1]["unit"]]
    with pytest.raises(UserError):
        intervention_table(trained, {"val": val}, 10, LAYER, result, k=0)


def test_bad_units_and_layers(trained, mnist5k):
    with pytest.raises(UserError, match="do not exist"):
        unit_deletion(trained, _spread(mnist5k.val, 4), 10, LAYER, units=[99])
    with pytest.raises(UserError, match="unknown layer"):
        unit_deletion(trained, _spread(mnist5k.val, 4), 10, "features.99")
    with pytest.raises(UserError, match="no weight"), scale_unit_weights(trained, "features.13", [0], 2.0):
        pass


def test_ablate_cli(trained, mnist5k, tmp_path, capsys):
    meta = CheckpointMeta("simple-cnn-narrow", 10, 1, 28, mnist5k.class_names, mnist5k.mean, mnist5k.std, "mnist5k")
    ckpt = save_checkpoint(tmp_path / "model.pt", trained, meta)
    out = tmp_path / "ablate"
    code = main(["ablate", "--checkpoint", str(ckpt), "--max-samples", "40", "--k", "2", "--c", "2",
                 "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "ablate.json").read_text())
    assert printed["layer"] == saved["layer"] == LAYER and saved["num_units"] == 32
    assert saved["num_samples"] == {"val": 40, "test": 40}
    rows = list(csv.DictReader((out / "ablate_units.csv").open()))
    assert len(rows) == 32 * 11 and {r["class"] for r in rows} == {"overall", *map(str, range(10))}
    assert main(["ablate", "--checkpoint", str(ckpt), "--c", "0", "--json"]) == 2
