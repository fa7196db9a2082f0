import dataclasses
import json

import pytest
import torch
from torch import nn

from modeldoctor import cli
from modeldoctor.analyses.decompose import (
    DecomposedLinear,
    FinalFeatures,
    class_histogram,
    decomposed,
    essentiality,
    final_features,
    final_linear,
    find_influential,
    influential_features,
    instance_top_features,
    mask_overlap,
    multiply_adds,
    parse_count,
)
from modeldoctor.analyses.decompose_protocol import (
    K_GRID,
    RetrainProtocol,
    choose_k,
    decompose_model,
    retrain,
    retrain_layer,
)
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.io.diagnosis_files import save_diagnosis
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from modeldoctor.models.zoo import build_model


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("simple-cnn-narrow", 10, 1).eval()


def test_full_mask_equals_original_layer_exactly():
    linear = nn.Linear(7, 3)
    x = torch.randn(11, 7)
    layer = DecomposedLinear(linear, torch.ones(3, 7, dtype=torch.bool))
    assert torch.equal(layer(x), linear(x))


def test_decomposed_logit_uses_only_influential_features():
    linear = nn.Linear(4, 2)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    layer = DecomposedLinear(linear, mask)
    x = torch.randn(5, 4)
    w, b = linear.weight.detach(), linear.bias.detach()
    expected = torch.stack([x[:, 0] * w[0, 0] + x[:, 3] * w[0, 3] + b[0], x[:, 1] * w[1, 1] + b[1]], 1)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert multiply_adds(mask) == {"full": 8, "decomposed": 3, "ratio": 3 / 8}


def test_histogram_selection_on_hand_made_example():
    # class 0: instances rank features {0, 2}, {0, 1}, {0, 2}; class 1: {3, 1}, {3, 2}
    feats = torch.tensor([[5., 0., 4., 1.], [-6., 3., 0., 1.], [2., 0., 1., 0.5],
                          [0., 2., 0., 9.], [0., 1., 3., 7.]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    top = instance_top_features(feats, 2)  # by |x|: the -6 counts as 6
    assert top.tolist() == [[True, False, True, False], [True, True, False, False], [True, False, True, False],
                            [False, True, False, True], [False, False, True, True]]
    hist = class_histogram(top, labels, 2)
    assert hist.tolist() == [[3, 1, 2, 0], [0, 1, 1, 2]]
    assert influential_features(hist, 1).tolist() == [[True, False, False, False], [False, False, False, True]]
    # ties (class 1: indices 1 and 2 both 1) go to the lower index
    assert influential_features(hist, 2).tolist() == [[True, False, True, False], [False, True, False, True]]
    # mass fraction: class 0 needs 3/6 → {0}; 0.6 → {0, 2}
    assert influential_features(hist, 0.5)[0].tolist() == [True, False, False, False]
    assert influential_features(hist, 0.6)[0].tolist() == [True, False, True, False]
    mask, _ = find_influential(feats, labels, 2, 2, 2)
    assert mask.sum(1).tolist() == [2, 2]


def test_parse_count():
    assert parse_count("5") == 5 and parse_count("0.9") == 0.9
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(UserError):
            parse_count(bad)


def test_context_manager_swaps_and_restores(mnist5k):
    model = tiny_model()
    name, linear = final_linear(model)
    feats = final_features(model, torch.utils.data.Subset(mnist5k.test, range(64)))
    mask, _ = find_influential(feats.features, feats.labels, 10, 3, 3)
    x = torch.stack([mnist5k.test[i][0] for i in range(64)])
    with torch.no_grad(), decomposed(model, mask) as layer:
        inside = model(x)
        assert model.get_submodule(name) is layer
    assert model.get_submodule(name) is linear
    with torch.no_grad():
        assert torch.allclose(inside, DecomposedLinear(linear, mask)(feats.features), atol=1e-5)
        assert torch.allclose(model(x), feats.logits, atol=1e-5)


def test_retraining_keeps_masked_weights_zero():
    torch.manual_seed(0)
    x = torch.randn(200, 6).abs()
    y = (x[:, 0] > x[:, 1]).long()
    data = FinalFeatures(x, y, torch.zeros(200, 2))
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    layer = DecomposedLinear(nn.Linear(6, 2), mask)
    before = (layer.weight.detach() * layer.mask).clone()
    info = retrain_layer(layer, data, data, RetrainProtocol("layer", epochs=3, lr=0.1), seed=0)
    assert torch.all(layer.weight.detach()[~mask] == 0)
    assert not torch.equal(layer.weight.detach(), before)
    assert 1 <= info["best_epoch"] <= 3 and len(info["history"]) == 3


def test_algorithm_with_every_feature_is_the_full_layer_exactly():
    torch.manual_seed(0)
    linear, x = nn.Linear(8, 3), torch.randn(40, 8).abs()
    mask, _ = find_influential(x, torch.arange(40) % 3, 3, k1=8, k2=8)
    assert mask.all()
    assert torch.equal(DecomposedLinear(linear, mask)(x), linear(x))


def _curve(rows):
    return [{"k1": k1, "k2": k2, "val_accuracy": acc, "val_r_A": acc / 0.9} for k1, k2, acc in rows]


def test_choose_k_rules():
    curve = _curve([(1, 2, 0.70), (2, 2, 0.80), (1, 5, 0.86), (2, 5, 0.86), (5, 5, 0.84), (1, 8, 0.89), (5, 8, 0.88)])
    # k2 given: the k1 with the best validation accuracy, ties to the smaller k1
    assert choose_k(curve, None, 5, 0.95)["k1"] == 1
    # k2 free: the smallest k2 whose best k1 reaches r_A 0.95 (0.86 / 0.9 = 0.956)
    chosen = choose_k(curve, None, None, 0.95)
    assert (chosen["k1"], chosen["k2"]) == (1, 5) and chosen["val_r_A"] == pytest.approx(0.86 / 0.9)
    # nothing reaches the target: the best r_A
    assert (choose_k(curve, None, None, 0.999)["k2"]) == 8
    assert choose_k(curve, 2, None, 0.95)["k2"] == 5
    assert choose_k(curve, 5, 8, 0.95)["rule"] == "given"
    with pytest.raises(UserError):
        choose_k(curve, 3, None, 0.95)


def _small_bundle(mnist5k, n: int = 300):
    def pick(split):
        return split.subset([int(i * len(split) / n) for i in range(n)])

    return dataclasses.replace(mnist5k, train=pick(mnist5k.train), val=pick(mnist5k.val), test=pick(mnist5k.test))


def test_k_is_chosen_from_the_grid_on_validation_only(mnist5k, one_thread):
    model, bundle = tiny_model(), _small_bundle(mnist5k)
    none = RetrainProtocol(epochs=0)
    first = decompose_model(model, bundle, k2=5, protocol=none, noise_repeats=1).summary
    assert first["k1"] in K_GRID and first["k2"] == 5 and first["selection"]["split"] == "val"
    # other test labels (all 0) change the test numbers but not the choice nor the curve
    t = bundle.test
    relabelled = ImageSplit([0] * len(t), t.ids, t.mean.flatten().tolist(), t.std.flatten().tolist(), images=t.images)
    second = decompose_model(model, dataclasses.replace(bundle, test=relabelled), k2=5, protocol=none,
                             noise_repeats=1).summary
    assert second["selection"] == first["selection"] and second["accuracy_full"] != first["accuracy_full"]
    free = decompose_model(model, bundle, protocol=none, noise_repeats=1).summary
    assert free["k1"] in K_GRID and free["k2"] in K_GRID
    curve = {(r["k1"], r["k2"]): r for r in free["selection"]["curve"]}
    assert curve[(free["k1"], free["k2"])]["val_r_A"] == pytest.approx(free["val"]["r_A"])
    assert decompose_model(model, bundle, k1=3, k2=3, protocol=none, noise_repeats=1).summary["k1"] == 3


@pytest.mark.parametrize("parameters", ["layer", "all"])
def test_retraining_changes_only_the_parameters_it_says(mnist5k, one_thread, parameters):
    model, bundle = tiny_model(), _small_bundle(mnist5k, 128)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    name, linear = final_linear(model)
    feats = {s: final_features(model, bundle.split(s)) for s in ("train", "val")}
    mask, _ = find_influential(feats["train"].features, feats["train"].labels, 10, 3, 3)
    net, info = retrain(model, mask, bundle, RetrainProtocol(parameters, epochs=1, lr=0.05), feats)
    assert info["best_epoch"] == 1
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the input model is untouched
    after = net.state_dict()
    head = {f"{name}.weight", f"{name}.bias", f"{name}.mask"}
    changed = {k for k, v in original.items() if k not in head and not torch.equal(after[k], v)}
    layer = net.get_submodule(name)
    assert torch.all(layer.weight.detach()[~mask] == 0) and not torch.equal(layer.weight.detach(), linear.weight * mask)
    if parameters == "layer":
        assert changed == set()  # weights and BatchNorm statistics below the layer exactly as they were
    else:
        assert any(k.endswith("weight") for k in changed)


def test_essentiality_replaces_only_chosen_features():
    linear = nn.Linear(4, 2)
    with torch.no_grad():  # class 0 reads feature 0, class 1 feature 1; features 2-3 are ignored
        linear.weight.copy_(torch.tensor([[1., 0., 0., 0.], [0., 1., 0., 0.]]))
        linear.bias.zero_()
    x = torch.tensor([[3., 0., 0., 0.], [0., 3., 0., 0.]]).repeat(50, 1)
    data = FinalFeatures(x, torch.tensor([0, 1]).repeat(50), torch.zeros(100, 2))
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    res = essentiality(linear, data, mask, torch.zeros(4), torch.ones(4) * 3, repeats=3)
    assert res["original"] == 1.0
    assert res["influential_replaced"] < 0.9
    # a random non-influential feature of class 0 may be feature 1, which class 1's logit reads
    assert res["non_influential_replaced"] > res["influential_replaced"]
    assert res["features_replaced_per_sample"] == 1.0


def test_mask_overlap():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    res = mask_overlap(a, b)
    assert res["intersection"] == [1, 2]
    assert res["jaccard"] == pytest.approx([1 / 3, 1.0])
    assert res["chance_intersection"] == pytest.approx([1.0, 1.0])
    with pytest.raises(UserError):
        mask_overlap(a, b[:, :3])


class HandDiagnosis:
    """A diagnosis of one 5-kernel layer for 2 classes whose relevant kernels are written out by hand."""

    abar = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.0], [0.2, 0.8, 0.1, 0.7, 0.6]])
    by_rule = {("topk", 2): [[1, 0, 1, 0, 0], [0, 1, 0, 1, 0]], ("minmax", None): [[1, 0, 1, 0, 0], [0, 1, 0, 1, 1]]}

    def correlation(self, layer: str) -> torch.Tensor:
        assert layer == "conv"
        return self.abar

    def default_relevance(self) -> dict:
        return {"method": "minmax"}

    def relevant(self, layer: str, method: str, k: int | None = None, **_: object) -> torch.Tensor:
        return torch.tensor(self.by_rule[(method, k)], dtype=torch.bool)


def test_compare_with_diagnosis_by_hand():
    from modeldoctor.analyses.decompose import compare_with_diagnosis

    # influential features: class 0 {0, 3}, class 1 {1, 2, 4}: mean size 2.5 → top-k at k = 2
    mask = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    res = compare_with_diagnosis(mask, HandDiagnosis(), "conv")
    top = res["top_k_same_size"]
    # top-2 kernels: class 0 {0, 2} ∩ {0, 3} = {0}, union of 3; class 1 {1, 3} ∩ {1, 2, 4} = {1}, union of 4
    assert top["k"] == 2 and top["intersection"] == [1, 1] and top["jaccard"] == pytest.approx([1 / 3, 1 / 4])
    # chance: |A|·|B| / 5 = 2·2/5 and 3·2/5
    assert top["chance_intersection"] == pytest.approx([0.8, 1.2])
    # the default rule: class 0 {0, 2} as above; class 1 {1, 3, 4} ∩ {1, 2, 4} = {1, 4}, union {1, 2, 3, 4}
    default = res["default_rule"]
    assert default["method"] == "minmax" and default["intersection"] == [1, 2]
    assert default["jaccard"] == pytest.approx([1 / 3, 2 / 4])


def test_model_without_linear_is_refused():
    with pytest.raises(UserError):
        final_linear(nn.Sequential(nn.Conv2d(1, 2, 3)))


def _checkpoint(tmp_path, mnist5k):
    model = tiny_model()
    meta = CheckpointMeta(model="simple-cnn-narrow", num_classes=10, in_channels=1, input_size=28,
                          class_names=mnist5k.class_names, mean=mnist5k.mean, std=mnist5k.std, dataset="mnist5k")
    return save_checkpoint(tmp_path / "model.pt", model, meta)


def test_cli_decompose(tmp_path, mnist5k, capsys):
    ckpt = _checkpoint(tmp_path, mnist5k)
    out = tmp_path / "dec"
    code = cli.main(["decompose", "--checkpoint", str(ckpt), "--k", "3", "--retrain", "layer", "--control",
                     "--noise-repeats", "1", "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("accuracy_full", "accuracy_decomposed", "r_A", "agreement", "accuracy_retrained"):
        assert isinstance(res[key], float)
    assert res["k2"] == 3 and res["k1"] in K_GRID and isinstance(res["accuracy_control"], float)
    assert res["protocol"]["parameters"] == "layer" and res["protocol"]["epochs"] == 1
    assert res["r_A"] == pytest.approx(res["accuracy_decomposed"] / res["accuracy_full"])
    assert res["multiply_adds"]["decomposed"] <= 30
    saved = json.loads((out / "influential.json").read_text())
    assert all(len(ix) == 3 for ix in saved["influential"])
    model, meta = load_checkpoint(out / "decomposed.pt")
    assert int((model.fc.weight != 0).sum()) <= 30 and meta.parent == str(ckpt)
    assert json.loads((out / "decompose.json").read_text())["r_A"] == res["r_A"]
    assert cli.main(["decompose", "--checkpoint", str(ckpt), "--k", "0", "--json"]) == 2


@pytest.mark.slow
def test_overlap_with_diagnosis_relevant_kernels(tmp_path, mnist5k, capsys):
    from modeldoctor.analyses.decompose import compare_with_diagnosis
    from modeldoctor.doctor.diagnosis import diagnose

    ckpt = _checkpoint(tmp_path, mnist5k)
    model, _ = load_checkpoint(ckpt)
    subset = torch.utils.data.Subset(mnist5k.train, range(300))
    diagnosis = diagnose(model, subset, layers="features.11", noise_draws=2, samples_per_class=3, require_correct=False)
    feats = final_features(model, subset)
    mask, _ = find_influential(feats.features, feats.labels, 10, 4, 4)
    res = compare_with_diagnosis(mask, diagnosis, "features.11")
    top = res["top_k_same_size"]
    assert top["k"] == 4 and len(top["jaccard"]) == 10 and all(0 <= j <= 1 for j in top["jaccard"])
    abar = diagnosis.correlation("features.11").tolist()
    # per class the 4 kernels of largest ā by a plain sort, where the 4th is not tied with the 5th (a dead class
    # has ā = 0 everywhere: any 4 are its top 4), against the 4 influential features
    untied = [c for c, row in enumerate(abar) if sorted(row)[-4] > sorted(row)[-5]]
    assert untied  # the untrained model leaves most classes dead at this layer
    for c in untied:
        row = abar[c]
        strongest = set(sorted(range(len(row)), key=lambda k: -row[k])[:4])
        influential = {k for k in range(len(row)) if mask[c, k]}
        assert top["intersection"][c] == len(strongest & influential)
        assert top["jaccard"][c] == pytest.approx(len(strongest & influential) / len(strongest | influential))
    with pytest.raises(UserError):
        compare_with_diagnosis(mask[:, :5], diagnosis, "features.11")
    save_diagnosis(diagnosis, tmp_path / "diag")
    assert cli.main(["decompose", "--checkpoint", str(ckpt), "--retrain-epochs", "0", "--noise-repeats", "1",
                     "--diagnosis", str(tmp_path / "diag"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["diagnosis_overlap"]["layer"] == "features.11" and res["accuracy_retrained"] is None
