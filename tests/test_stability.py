import json
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import cli
from modeldoctor.analyses import detectors
from modeldoctor.analyses.detectors import SCORES
from modeldoctor.analyses.stability import (
    activation_std,
    auroc,
    flip_score,
    halves,
    noisy_predictions,
    successful_adversarials,
)
from modeldoctor.data.bundle import make_loader
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, fit


def test_auroc_hand_made():
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([1.0, 0.0], [0.5]) == 0.5
    # pairs: (0.3: >0.1) + (0.6: >0.1, >0.4, =0.6 counts ½) = 3.5 of 6
    assert auroc(torch.tensor([0.3, 0.6]), torch.tensor([0.1, 0.4, 0.6])) == pytest.approx(3.5 / 6)


def test_flip_score_counts_changed_predictions():
    preds = torch.tensor([[[1, 2, 3], [1, 2, 0]], [[0, 0, 0], [0, 0, 0]]])  # (deltas=2, J=2, N=3)
    score = flip_score(preds, torch.tensor([1, 2, 3]))
    assert score.tolist() == [[0.0, 0.0, 0.5], [1.0, 1.0, 1.0]]
    assert bool(((score >= 0) & (score <= 1)).all())


def test_halves_is_a_seeded_half():
    a, b = halves(11, 3), halves(11, 3)
    assert torch.equal(a, b) and int(a.sum()) == 5


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


def test_noise_only_at_the_chosen_layer_and_zero_delta_is_identity():
    model = small_net()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        earlier_clean = model[0](x)
        linear_in_clean = model[4](model[3](model[2](model[1](earlier_clean))))
    earlier, linear_in = [], []
    h1 = model[0].register_forward_hook(lambda m, i, o: earlier.append(o.detach().clone()))
    h2 = model[5].register_forward_pre_hook(lambda m, i: linear_in.append(i[0].detach().clone()))
    try:
        clean, noisy = noisy_predictions(model, x, ["2"], [0.0, 5.0], draws=4, batch_size=6)
    finally:
        h1.remove(), h2.remove()
    assert torch.equal(clean, model(x).argmax(1))
    assert noisy["2"].shape == (2, 4, 6)
    assert torch.equal(noisy["2"][0], clean.expand(4, 6))  # δ = 0: identical predictions
    def unchanged(o: torch.Tensor) -> bool:  # the replay's own consistency check may run on the first samples only
        n = len(o)
        reference = earlier_clean.repeat(n // 6, 1, 1, 1) if n % 6 == 0 else earlier_clean[:n]
        return torch.allclose(o, reference)

    assert earlier and all(unchanged(o) for o in earlier)
    assert any(o.shape == (24, 64) and not torch.allclose(o, linear_in_clean.repeat(4, 1)) for o in linear_in)
    assert not model.training and all(m.inplace is False for m in model if isinstance(m, nn.ReLU))


def test_activation_std_matches_direct_computation():
    model = small_net()
    x = torch.randn(10, 1, 8, 8)
    with torch.no_grad():
        direct = model[2](model[1](model[0](x))).std().item()
    assert activation_std(model, x, ["2"], batch_size=3)["2"] == pytest.approx(direct, rel=1e-5)


@pytest.fixture(scope="module")
def trained(mnist5k, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("simple-cnn-narrow", 10, 1)
    fit(model, mnist5k.train, mnist5k.val, 10, TrainConfig(epochs=1, lr=0.05, seed=0))
    meta = CheckpointMeta(model="simple-cnn-narrow", num_classes=10, in_channels=1, input_size=28,
                          class_names=mnist5k.class_names, mean=mnist5k.mean, std=mnist5k.std, dataset="mnist5k")
    return model, save_checkpoint(tmp_path_factory.mktemp("stab") / "model.pt", model, meta)


def test_adversarial_set_holds_only_successful_flips(trained, mnist5k):
    model, _ = trained
    data = successful_adversarials(model, mnist5k.test, eps=0.2, max_samples=100)
    assert len(data.labels) <= 100 and 0 < len(data.source) <= len(data.labels)
    with torch.no_grad():
        assert torch.equal(model(data.clean).argmax(1), data.labels)
        adv_pred = model(data.adversarial).argmax(1)
    assert torch.equal(adv_pred, data.false_labels) and bool((adv_pred != data.labels[data.source]).all())
    raw = data.adversarial * mnist5k.test.std + mnist5k.test.mean
    raw_clean = data.clean[data.source] * mnist5k.test.std + mnist5k.test.mean
    assert (raw - raw_clean).abs().max() <= 0.2 + 1e-5 and raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    x0 = next(iter(make_loader(mnist5k.test, 100)))[0]
    assert len(data.labels) == int((model(x0).argmax(1) == next(iter(make_loader(mnist5k.test, 100)))[1]).sum())


def test_cli_stability(trained, tmp_path, capsys):
    _, ckpt = trained
    out = tmp_path / "stab"
    code = cli.main(["stability", "--checkpoint", str(ckpt), "--layer", "features.11", "--eps", "0.2",
                     "--deltas", "0,0.5,2", "--draws", "3", "--max-samples", "120", "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= res["auroc"] <= 1.0 and res["delta"] in (0.0, 0.5, 2.0)
    curve = res["curves"]["features.11"]
    assert curve["normal_accuracy"][0] == 1.0 and curve["adversarial_keep_false"][0] == 1.0
    assert curve["adversarial_true_label"][0] == 0.0 and curve["auroc_all"][0] == 0.5
    assert 0 < res["fgsm"]["success_rate"] <= 1
    assert (out / "stability.png").stat().st_size > 1000
    assert json.loads((out / "stability.json").read_text())["auroc"] == res["auroc"]
    detectors = res["detectors"]
    assert detectors["attack"] == "fgsm" and 0.0 <= detectors["auroc_noise"] <= 1.0
    assert 0.0 <= detectors["auroc_feature_squeezing"] <= 1.0 and detectors["noise_choice"]["score"] in SCORES
    assert 0.0 <= detectors["auroc_noise_combined"] <= 1.0
    assert detectors["combined_fit"]["relative_deltas"] == [0.5, 1.0, 2.0, 3.0]
    assert cli.main(["report", str(out), "--no-images", "--json"]) == 0
    page = Path(json.loads(capsys.readouterr().out)["html"]).read_text()
    assert "feature noise (Discovery 2), combined" in page and "feature squeezing (Xu et al. 2018)" in page
    assert cli.main(["stability", "--checkpoint", str(ckpt), "--calibration-split", "test", "--json"]) == 2
    assert cli.main(["stability", "--checkpoint", str(ckpt), "--deltas", "a,b", "--json"]) == 2
    assert cli.main(["stability", "--checkpoint", str(ckpt), "--layer", "nope", "--json"]) == 2


def test_combiner_is_fit_on_calibration_adversarials_only(trained, mnist5k, monkeypatch):
    model, _ = trained
    seen = []
    real = detectors.fit_combiner

    def spy(normal, adversarial, source, **kwargs):
        seen.append((normal.shape, adversarial.shape))
        return real(normal, adversarial, source, **kwargs)

    monkeypatch.setattr(detectors, "fit_combiner", spy)
    settings = {"eps": 0.2, "deltas": (0.0, 1.0), "draws": 2, "max_samples": 60}
    on_test = detectors.compare_detectors(model, mnist5k.val, mnist5k.test, **settings)
    on_train = detectors.compare_detectors(model, mnist5k.val, mnist5k.train, **settings)
    calibration = successful_adversarials(model, mnist5k.val, 0.2, 60)
    features = len(on_test["layers"]) * len(detectors.INSTABILITY)
    assert seen == [((len(calibration.labels), features), (len(calibration.source), features))] * 2
    assert on_test["combined_fit"] == on_train["combined_fit"]  # the judged split never reaches the fit
    assert 0.0 <= on_test["auroc_noise_combined"] <= 1.0
