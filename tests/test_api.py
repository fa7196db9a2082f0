"""The Python API: one function per command on model objects, typed results whose to_dict() is the command's
JSON layout, and every function leaves the model passed in as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modeldoctor as md
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors
from modeldoctor.io.documents import ABLATION, DECOMPOSITION, DISSECTION, INFLUENTIAL
from modeldoctor.models.checkpoint import weights_hash
from modeldoctor.models.zoo import SimpleCNN


def test_every_exported_name_resolves() -> None:
    for name in md.__all__:
        if name != "ModelDoctorCallback":  # importing Lightning takes seconds; tests/test_lightning.py covers it
            assert getattr(md, name) is not None, name
    with pytest.raises(AttributeError):
        md.no_such_function  # noqa: B018


def _data() -> DataBundle:
    """3 classes, 16 px: a bright bar whose height is the class, over noise; masks = the bar."""
    g = torch.Generator().manual_seed(0)
    n, size = 90, 16
    labels = np.arange(n) % 3
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i, c in enumerate(labels):
        masks[i, 2 + 4 * int(c):7 + 4 * int(c), 5:11] = True
    images = (0.3 * torch.rand(n, 1, size, size, generator=g)).masked_fill(masks.unsqueeze(1), 1.0)
    ids = [f"img{i}" for i in range(n)]
    return bundle_from_tensors("mine", images, labels, ids, ["a", "b", "c"],
                               [np.arange(0, 60), np.arange(60, 75), np.arange(75, 90)], None,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return _data()


@pytest.fixture(scope="module")
def trained(data: DataBundle) -> md.TrainResult:
    return md.train("simple-cnn-narrow", data, md.TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=1))


def test_readme_flow_on_a_users_own_model(data: DataBundle) -> None:
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
    assert set(summary) >= {"original", "control", "treated", "lambdas", "weight_change", "select", "verdict"}
    names = [c["name"] for c in summary["candidates"]]
    assert summary["select"] == "swap" and summary["chosen"] in names
    assert names[:2] == ["counterfactual", "last-layer"] and names[2:] in ([], ["counterfactual-low-lr"])
    assert summary["lambdas"] == ({} if summary["chosen"] == "last-layer" else {"counterfactual": 3.0})
    assert summary["verdict"]["use_treated"] == (summary["verdict"]["winner"] == "treated")
    assert all(0 <= summary[arm][split]["accuracy"] <= 1 for arm in ("original", "control", "treated")
               for split in ("val", "test", "swap"))
    assert set(summary["weight_change"]) == {"control", "treated"}


def test_train_is_seeded_and_records_what_the_checkpoint_needs(data: DataBundle, trained: md.TrainResult) -> None:
    again = md.train("simple-cnn-narrow", data, md.TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=1))
    assert weights_hash(again.model) == weights_hash(trained.model) == trained.meta.weights_sha256
    meta = trained.meta
    assert (meta.model, meta.dataset, meta.num_classes, meta.in_channels, meta.input_size) == \
        ("simple-cnn-narrow", "mine", 3, 1, 16)
    assert meta.train_config["seed"] == 1 and meta.metrics["val"]["accuracy"] == trained.metrics["val"]["accuracy"]
    summary = trained.to_dict()
    assert set(summary) == {"metrics", "best_epoch", "history", "seconds", "weights_sha256", "warnings"}
    assert 1 <= summary["best_epoch"] <= 2 and len(summary["history"]) == 2
    evaluated = md.evaluate_model(trained.model, data, ["val", "test"], fgsm=[0.0, 0.1])
    assert evaluated["val"]["accuracy"] == trained.metrics["val"]["accuracy"]
    fgsm = evaluated["test"]["fgsm"]
    assert set(fgsm) == {"0", "0.1"} and fgsm["0.1"] <= fgsm["0"] == pytest.approx(evaluated["test"]["accuracy"])
    with pytest.raises(UserError, match="unknown split"):
        md.evaluate_model(trained.model, data, ["nope"])
    layers = md.list_layers(trained.model, (1, 16, 16))
    assert layers["default"] == layers["layers"][-1]["name"] and [ln["depth"] for ln in layers["layers"]] == list(
        range(len(layers["layers"])))


def test_diagnose_model_lists_the_same_images_as_annotation_list(data: DataBundle, trained: md.TrainResult) -> None:
    model = trained.model
    before = weights_hash(model)
    options = md.DiagnosisOptions(samples_per_class=4, noise_draws=2, require_correct=False)
    result = md.diagnose_model(model, data, "all", options, lowest=5, model_spec="simple-cnn-narrow")
    assert result.annotation == md.annotation_list(model, data, per_class=5)  # one shared scoring pass, same list
    alone = md.diagnose(model, data.train, layers="all", options=options)
    for name, layer in result.diagnosis.layers.items():
        torch.testing.assert_close(layer.correlation, alone.layers[name].correlation)
    summary = result.to_dict()
    assert [s["name"] for s in summary["layers"]] == list(result.diagnosis.layers) and summary["seconds"] > 0
    assert md.diagnose_model(model, data, options=options).annotation is None
    assert weights_hash(model) == before and not model.training


def test_explain_names_the_classes(data: DataBundle, trained: md.TrainResult) -> None:
    diagnosis = md.diagnose(trained.model, data.train, samples_per_class=4, noise_draws=2, require_correct=False,
                            class_names=data.class_names)
    image, label, index = data.test[0]
    result = md.explain(trained.model, diagnosis, image, "img75", label=label, object_mask=data.masks["img75"],
                        seed_index=index)
    summary = result.to_dict()
    assert summary["label"] == "a" and summary["prediction"] in ("a", "b", "c") and 0 < summary["object_area"] < 1
    assert summary["prediction"] == ["a", "b", "c"][result.explanation.prediction]
    assert result.title().startswith(f"img75: predicted {summary['prediction']} (") and result.title().endswith(
        ", true a")


def test_ablate_reports_both_splits_and_attaches_concepts(data: DataBundle, trained: md.TrainResult) -> None:
    model = trained.model
    dissection = md.dissect(model, data, "val", object_masks=data.masks, concept_source="builtin", max_samples=10)
    assert dissection.concept_source == "builtin"
    layer = dissection.to_dict()["layers"][next(iter(dissection.layers))]
    assert layer["num_samples"] == 10 and set(layer["concepts"]) == {"object", "background"}
    assert md.dissect(model, data, "val").concept_source == "builtin-stroke"
    report = md.ablate(model, data, k=2, constants=[2.0], max_samples=12, dissection=dissection.to_dict())
    summary = report.to_dict()
    assert set(ABLATION.keys) <= set(summary) and summary["num_samples"] == {"val": 12, "test": 12}
    channels = md.list_layers(model, (1, 16, 16))["layers"][-1]["out_shape"][0]
    assert summary["num_units"] == len(summary["units"]) == channels and summary["k"] == 2 and summary["c"] == [2.0]
    assert all("concept" in e for e in summary["ranking"]["worst"] + summary["ranking"]["best"])
    assert set(DISSECTION.keys) <= set(dissection.to_dict())
    with pytest.raises(UserError, match="no results for layer"):
        md.ablate(model, data, "features.0", max_samples=4, dissection=dissection.to_dict())


def test_decompose_adds_the_overlap_with_a_diagnosis(data: DataBundle, trained: md.TrainResult) -> None:
    diagnosis = md.diagnose(trained.model, data.train, samples_per_class=4, noise_draws=2, require_correct=False)
    report = md.decompose(trained.model, data, 2, 2, retrain_epochs=0, noise_repeats=1, diagnosis=diagnosis)
    summary = report.to_dict()
    assert set(DECOMPOSITION.keys) <= set(summary) and summary["diagnosis_overlap"]["layer"] == list(diagnosis.layers)[0]
    influential = report.influential()
    assert set(INFLUENTIAL.keys) <= set(influential) and influential["classes"] == ["a", "b", "c"]
    assert np.asarray(influential["histogram"]).shape == (3, summary["features"])
    assert "diagnosis_overlap" not in md.decompose(trained.model, data, 2, 2, retrain_epochs=0, noise_repeats=1).to_dict()


def test_treat_seeds_reports_mean_and_spread(data: DataBundle, trained: md.TrainResult) -> None:
    seen: list[int] = []
    results = md.treat_seeds(trained.model, None, data, [0, 1], on_result=lambda r: seen.append(r.train_config.seed),
                             annotate_per_class=4, epochs=1, noise_draws=1, control=False,
                             train_config=md.TrainConfig.from_dict(trained.meta.train_config))
    assert seen == [0, 1] and [r.train_config.lr for r in results] == [0.05, 0.05]  # the checkpoint's settings
    assert results[0].train_config.batch_size == 16 and results[0].control is None
    assert [a.name for a in results[0].arms()] == ["treated"]
    recorded = tuple(results[0].arms()[0].recipe["treatment"]["constraints"])
    assert recorded == {"counterfactual": ("counterfactual",), "last-layer": ()}[results[0].chosen]
    document = md.treatment_document(results, "base/model.pt")
    assert document["checkpoint"] == "base/model.pt" and document["control"] is None
    assert document["treated"]["seeds"] == 2 and "std" in document["treated"]
    values = [r.treated_metrics["test"]["accuracy"] for r in results]
    assert document["treated"]["test"]["accuracy"] == pytest.approx(np.mean(values))
