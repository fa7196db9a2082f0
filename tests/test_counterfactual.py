"""Counterfactual backgrounds, the last-layer re-fit, the swap verdict and the search: each against an independent
reference (a hand loop, scikit-learn, hand-computed statistics) and end to end on a tiny background-shortcut set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from modeldoctor import api
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask
from modeldoctor.data.swap import erase_object, paste_object
from modeldoctor.doctor import arms
from modeldoctor.doctor.annotation import MaskBank
from modeldoctor.doctor.counterfactual import Composer
from modeldoctor.doctor.last_layer import refit_head
from modeldoctor.doctor.search import Meter, choose, needs_fallback, paired_gain, verdict
from modeldoctor.training import TrainConfig, fit
from toys import TinyNet, background_shortcut


@pytest.fixture(scope="module")
def shortcut():
    torch.manual_seed(0)
    data = background_shortcut()
    model = TinyNet()
    fit(model, data.train, data.val, 4, TrainConfig(epochs=10, batch_size=32, lr=0.05))
    return data, model


def test_erase_keeps_background_texture_and_removes_the_object():
    g = torch.Generator().manual_seed(0)
    image = 0.5 + 0.1 * torch.randn(1, 24, 24, generator=g)
    mask = torch.zeros(24, 24, dtype=torch.bool)
    mask[8:14, 9:15] = True
    image[0][mask] = 1.0
    out = erase_object(image, mask, grow=1)
    hole = torch.zeros_like(mask)
    hole[7:15, 8:16] = True
    assert out[0][hole].max() < 0.95  # no object pixel left
    assert torch.equal(out[0][~hole], image[0][~hole])  # the background is untouched
    # the fill carries the background's noise (a smooth fill would have a far smaller spread)
    assert abs(float(out[0][hole].std()) - 0.1) < 0.03


def test_composer_pastes_objects_on_other_classes_backgrounds():
    data = background_shortcut(n_train=40)
    bank = MaskBank.build(data.train, data.masks, list(range(12)), 20)
    composer = Composer(data.train, bank)
    objects, donors = composer.draw(30, torch.Generator().manual_seed(1))
    x = composer.compose(objects, donors) * data.train.std + data.train.mean
    for n, (o, d) in enumerate(zip(objects.tolist(), donors.tolist())):
        i, j = bank.pool[o], bank.pool[d]
        assert int(data.train.labels[i]) != int(data.train.labels[j])
        mask = data.masks[data.train.ids[i]]
        assert torch.allclose(x[n][0][mask], data.train.raw(i)[0][mask], atol=1e-5)
        donor_hole = expand_mask(data.masks[data.train.ids[j]], 2)  # what erase_object fills (grown by 2)
        outside = ~(mask | donor_hole)  # neither object: the donor's own background
        assert torch.allclose(x[n][0][outside], data.train.raw(j)[0][outside], atol=1e-5)


def test_donor_place_centres_the_object_box_on_the_donor_s_and_keeps_it_in_frame():
    image = torch.zeros(1, 12, 12)
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[1:4, 2:4] = True  # box rows 1–3, cols 2–3: centre (2, 2.5)
    image[0][mask] = torch.arange(1.0, 7.0)
    background = torch.full((1, 12, 12), 0.5)
    donor = torch.zeros(12, 12, dtype=torch.bool)
    donor[6:9, 7:10] = True  # centre (7, 8): the object moves by (5, 6 — 5.5 rounded to even)
    out = paste_object(image, mask, background, at=donor)
    expected = background.clone()
    for y, x in mask.nonzero().tolist():
        expected[0, y + 5, x + 6] = image[0, y, x]
    assert torch.equal(out, expected)
    corner = torch.zeros(12, 12, dtype=torch.bool)
    corner[11, 11] = True  # centring there would push the box out: it stops at the frame's edge
    out = paste_object(image, mask, background, at=corner)
    assert torch.equal(out[0, 9:12, 10:12].flatten(), image[0][mask])


def test_composer_at_the_donor_s_place_matches_one_paste_per_composite():
    data = background_shortcut(n_train=40)
    bank = MaskBank.build(data.train, data.masks, list(range(12)), 20)
    composer = Composer(data.train, bank, place="donor")
    objects, donors = composer.draw(20, torch.Generator().manual_seed(2))
    x = composer.compose(objects, donors) * data.train.std + data.train.mean
    for n, (o, d) in enumerate(zip(objects.tolist(), donors.tolist())):
        i, j = bank.pool[o], bank.pool[d]
        mask_i, mask_j = data.masks[data.train.ids[i]], data.masks[data.train.ids[j]]
        one = paste_object(data.train.raw(i), mask_i, erase_object(data.train.raw(j), mask_j), at=mask_j)
        assert torch.allclose(x[n], one, atol=1e-5)


def test_refit_head_matches_scikit_learn_and_touches_only_the_head():
    data = background_shortcut(n_train=80)
    bank = MaskBank.build(data.train, data.masks, list(range(40)), 20)
    composer = Composer(data.train, bank)
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alpha = 1e-2
    refit = refit_head(model, composer, 4, per_object=5, alpha=alpha, steps=500, seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as found
    changed = [k for k, v in refit.state_dict().items() if not torch.equal(before[k], v)]
    assert set(changed) <= {"fc.weight", "fc.bias"}
    x, y = composer.dataset(5, 3)
    with torch.no_grad():
        features = torch.relu(model.conv2(torch.relu(model.conv1(x)))).amax((2, 3)).numpy()
    # sklearn: ½‖w‖² + C Σ log-loss  ⇔  mean log-loss + ‖w‖² / (2 C N)
    reference = LogisticRegression(C=1 / (2 * alpha * len(y)), max_iter=5000, tol=1e-10).fit(features, y.numpy())
    np.testing.assert_allclose(refit.fc.weight.detach().numpy() - refit.fc.weight.detach().numpy().mean(0),
                               reference.coef_ - reference.coef_.mean(0), atol=2e-3)


class Fixed(nn.Module):
    """Predicts ``predictions[row]`` for the image whose first pixel holds its row number."""

    def __init__(self, predictions: list[int]) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(predictions))
        self.anchor = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0, 0, 0].long()
        return nn.functional.one_hot(self.p[rows], 3).float()


def six_composites() -> ImageSplit:
    images = torch.arange(6).float().view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    return ImageSplit([0, 0, 1, 1, 2, 2], ["a@1", "a@2", "b@1", "b@2", "c@1", "c@2"], [0.0], [1.0], images=images)


def test_paired_gain_by_hand():

    split = six_composites()
    treated = Fixed([0, 0, 1, 0, 2, 2])  # per object: a 2/2, b 1/2, c 2/2
    control = Fixed([0, 1, 0, 0, 2, 0])  # per object: a 1/2, b 0/2, c 1/2
    gain, se, objects = paired_gain(treated, control, split)
    # object means of the difference: 0.5, 0.5, 0.5 → mean 0.5, std 0
    assert objects == 3 and gain == pytest.approx(0.5) and se == pytest.approx(0.0)


@pytest.mark.parametrize(("tightness", "warns"), [(0.47, True), (0.95, False), (None, False)])
def test_the_verdict_warns_when_the_meter_s_masks_are_loose(tightness, warns):
    split = six_composites()
    meter = Meter(split, split, tightness)
    result = verdict(Fixed([0, 0, 1, 1, 2, 2]), Fixed([0, 1, 0, 0, 2, 0]), meter, "counterfactual")
    assert ("masks are loose" in result["message"]) is warns and result["mask_tightness"] == tightness


def test_an_unconfirmed_gain_says_how_much_annotation_would_confirm_it():
    split = six_composites()
    # per object a: 2/2 vs 0/2, b and c: equal → differences 1, 0, 0: gain 1/3, se = std(1, 0, 0)/√3 = 1/3
    result = verdict(Fixed([0, 0, 1, 1, 2, 2]), Fixed([1, 1, 1, 1, 2, 2]), Meter(split, split), "counterfactual")
    assert not result["use_treated"] and result["swap_gain"] == pytest.approx(1 / 3)
    # 2·se / gain = 2 → four times the objects halve se: (2 · 1/3 / (1/3))² = 4
    assert result["annotation_factor"] == pytest.approx(4.0) and "about 4.0× as many annotated" in result["message"]
    confirmed = verdict(Fixed([0, 0, 1, 1, 2, 2]), Fixed([0, 1, 0, 0, 2, 0]), Meter(split, split), "counterfactual")
    assert confirmed["use_treated"] and confirmed["annotation_factor"] is None


@pytest.mark.parametrize(("control", "winner"), [([1, 1, 2, 2, 0, 0], "original"), ([1, 0, 1, 1, 2, 2], "control")])
def test_the_verdict_keeps_the_original_when_the_plain_fine_tune_itself_did_harm(control, winner):
    split = six_composites()
    original = Fixed([0, 0, 1, 1, 2, 2])  # every composite right
    # control all wrong: object differences −1, −1, −1 → gain −1, se 0; one wrong: −1/2, 0, 0 → gain −1/6, se 1/6
    expected = (-1.0, 0.0) if winner == "original" else (-1 / 6, 1 / 6)
    result = verdict(Fixed(control), Fixed(control), Meter(split, split), "counterfactual", original=original)
    assert not result["use_treated"] and result["winner"] == winner
    assert (result["control_gain_vs_original"], result["control_gain_vs_original_se"]) == pytest.approx(expected)
    assert ("keep your original model" in result["message"]) is (winner == "original")
    assert ("keep the control" in result["message"]) is (winner == "control")


def test_shipped_default_beats_its_control_on_test(shortcut):
    data, model = shortcut
    result = api.treat(model, None, data, annotate_per_class=20, epochs=3, batch_size=32)
    treated, control = result.treated_metrics["test"]["accuracy"], result.control_metrics["test"]["accuracy"]
    assert treated > control + 0.2, (treated, control, result.candidates)
    assert result.verdict["use_treated"] and result.verdict["winner"] == "treated"
    assert result.treated_metrics["swap"]["accuracy"] > result.control_metrics["swap"]["accuracy"]
    # the counterfactual fine-tune retries at a fifth of the lr exactly when another candidate beat it
    first, *others = result.candidates
    retried = [c for c in others if c["name"] == "counterfactual-low-lr"]
    assert bool(retried) == (first["select_swap"] < max(c["select_swap"] for c in others if c not in retried))
    assert all(c["lr"] == pytest.approx(first["lr"] / 5) for c in retried)
    assert result.chosen == max(result.candidates, key=lambda c: c["select_swap"])["name"]


def test_test_labels_change_nothing_treat_selects(shortcut):
    data, model = shortcut
    kwargs = {"annotate_per_class": 10, "epochs": 1, "batch_size": 32, "lr": 0.05, "control": False,
              "candidates": ("counterfactual", "last-layer")}
    first = api.treat(model, None, data, **kwargs)
    shuffled = dataclasses.replace(data, test=ImageSplit(
        data.test.labels[torch.randperm(len(data.test), generator=torch.Generator().manual_seed(5))].tolist(),
        data.test.ids, data.mean, data.std, images=data.test.images))
    second = api.treat(model, None, shuffled, **kwargs)
    assert first.chosen == second.chosen
    assert [c["select_swap"] for c in first.candidates] == [c["select_swap"] for c in second.candidates]
    assert first.verdict["swap_gain"] == second.verdict["swap_gain"]
    for a, b in zip(first.treated.state_dict().values(), second.treated.state_dict().values()):
        assert torch.equal(a, b)


def test_last_layer_candidate_refits_the_head_of_the_original_or_its_control(shortcut):
    """The last-layer candidate is the original model or the control's fine-tune with only its head re-fit (DFR on
    the features a training left), whichever reads the select swaps better."""
    data, model = shortcut
    result = api.treat(model, None, data, annotate_per_class=8, epochs=1, batch_size=32, lr=0.05,
                       candidates=("last-layer",))
    start = result.candidates[0]["head_of"]
    reference = {"control": result.control, "original": model}[start].state_dict()
    treated = result.treated.state_dict()
    assert sorted(k for k in treated if not torch.equal(treated[k], reference[k])) == ["fc.bias", "fc.weight"]
    assert not torch.equal(result.control.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])


def test_last_layer_keeps_the_start_whose_features_still_carry_the_object(shortcut):
    """A start whose features are constant (its convolutions zeroed) cannot be re-fit past chance, so the other
    start's head is the one kept, whichever side it is on."""
    from modeldoctor.doctor.arms import _last_layer
    from modeldoctor.doctor.search import meter_splits

    data, model = shortcut
    annotated = MaskBank.build(data.train, data.masks, list(range(80)), data.input_size)
    bank = annotated.restricted(list(range(40)))
    chooser = meter_splits(data.train, annotated, list(range(40, 80)), 0).select
    blind = TinyNet()
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.conv2.weight.zero_()
        blind.conv2.bias.zero_()
    assert _last_layer(model, blind, data, bank, chooser, 0)[1] == "original"
    assert _last_layer(blind, model, data, bank, chooser, 0)[1] == "control"


def test_more_than_two_fine_tunes_run_trials_and_the_best_reruns_in_full(shortcut):
    data, model = shortcut
    names = ("counterfactual", "counterfactual-light", "space")
    result = api.treat(model, None, data, annotate_per_class=8, epochs=2, batch_size=32, lr=0.05, control=False,
                       candidates=names)
    assert [c["name"] for c in result.candidates] == list(names)
    assert all(c["trial_epochs"] == 1 for c in result.candidates)
    best = max(result.candidates, key=lambda c: c["select_swap"])["name"]
    assert result.chosen == best and result.verdict["candidate"] == best
    assert tuple(result.config.constraints) == {"counterfactual": ("counterfactual",),
                                                "counterfactual-light": ("counterfactual",), "space": ("space",)}[best]


def test_refine_cuts_the_chosen_boxes_to_their_objects_before_treating(shortcut, monkeypatch):
    """``refine=True`` hands exactly the chosen annotated images' boxes to GrabCut, and the bank then holds masks
    inside each box that are tighter than it (the toy's shapes are bright on a flat grey)."""
    import modeldoctor.api.treatment as treatment_api
    from modeldoctor.data.refine import refine_masks

    pytest.importorskip("cv2")
    data, model = shortcut
    boxes = {}
    for sid, m in data.masks.items():
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        boxes[sid] = torch.zeros_like(m)
        boxes[sid][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    seen: dict[str, torch.Tensor] = {}

    def spy(split, masks, **kwargs):
        seen.update(refine_masks(split, masks, **kwargs))
        return dict(seen)

    monkeypatch.setattr(treatment_api, "refine_masks", spy)
    result = api.treat(model, None, data, masks=boxes, annotate_per_class=4, epochs=1, batch_size=32, lr=0.05,
                       control=False, candidates=("last-layer",), refine=True)
    assert sorted(seen) == sorted(result.annotated + result.held_out)
    assert all(bool((seen[s] <= boxes[s]).all()) for s in seen)
    assert sum(int(seen[s].sum()) for s in seen) < 0.9 * sum(int(boxes[s].sum()) for s in seen)


def test_a_trailing_fine_tune_stops_after_one_epoch_and_the_run_ends_as_the_full_one(shortcut, tmp_path):
    """Against the full run (every fine-tune to its end, ``early_stop_margin=None``) and its own per-epoch record:
    the fine-tune stops when its first epoch trails the re-fit head by more than the margin × the schedule left
    (2/3), the fallback then runs, and a fine-tune continued epoch by epoch ends bit for bit where the uninterrupted
    one did."""
    data, model = shortcut
    kwargs = {"annotate_per_class": 20, "epochs": 3, "batch_size": 32, "lr": 0.05}
    full = api.treat(model, None, data, early_stop_margin=None, state_dir=tmp_path, **kwargs)
    first_epoch = torch.load(tmp_path / ".state-counterfactual.pt", weights_only=True)["history"][0]["val_accuracy"]
    scores = {c["name"]: c["select_swap"] for c in full.candidates}
    trailing = scores["last-layer"] - first_epoch
    assert trailing > 0.1, "the toy's counterfactual fine-tune must trail the re-fit head after one epoch"
    stopped = api.treat(model, None, data, early_stop_margin=trailing / 2, **kwargs)
    continued = api.treat(model, None, data, early_stop_margin=100.0, **kwargs)  # checks each epoch, never stops
    cut = {c["name"]: c for c in stopped.candidates}
    assert cut["counterfactual"]["stopped_after"] == 1
    assert cut["counterfactual"]["select_swap"] == pytest.approx(first_epoch)
    assert "counterfactual-low-lr" in cut and full.chosen != "counterfactual"
    assert [c["name"] for c in continued.candidates] == [c["name"] for c in full.candidates]
    assert [c["select_swap"] for c in continued.candidates] == [c["select_swap"] for c in full.candidates]
    assert "stopped_after" not in continued.candidates[0]
    # The per-epoch record: one score per epoch run, the kept (best) checkpoint re-measured as its maximum, and a
    # fine-tune continued epoch by epoch recording what the uninterrupted one did.
    trajectory = full.candidates[0]["select_swap_per_epoch"]
    assert len(trajectory) == 3 and trajectory[0] == pytest.approx(first_epoch)
    assert max(trajectory) == pytest.approx(full.candidates[0]["select_swap"])
    assert cut["counterfactual"]["select_swap_per_epoch"] == pytest.approx([first_epoch])
    assert continued.candidates[0]["select_swap_per_epoch"] == pytest.approx(trajectory)
    assert "select_swap_per_epoch" not in cut["last-layer"]
    for run in (stopped, continued):
        assert run.chosen == full.chosen
        for a, b in zip(run.treated.state_dict().values(), full.treated.state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("corr, place", [(1.0, "donor"), (0.0, "own")])
def test_auto_pastes_at_the_donor_s_place_only_where_the_check_finds_background_reading(shortcut, corr, place):
    """``paste_at="auto"`` follows the shortcut check of the model being treated: a model trained where the
    background gives the class away reads it (donor's place); one trained where it never does, not (own place)."""
    data, model = shortcut
    if corr == 0.0:
        torch.manual_seed(0)
        data = background_shortcut(corr=0.0)
        model = TinyNet()
        fit(model, data.train, data.val, 4, TrainConfig(epochs=10, batch_size=32, lr=0.05))
    check = api.shortcut_check(model, data, data.masks, "train", 20)["verdict"]["reads_background"]
    assert check == (corr == 1.0)
    result = api.treat(model, None, data, annotate_per_class=10, epochs=1, batch_size=32, lr=0.05, control=False,
                       candidates=("last-layer",), paste_at="auto", swap_paste_at="auto")
    assert (result.config.paste_at, result.config.swap_paste_at) == (place, place)


def test_a_tie_on_select_swaps_runs_the_fallback_and_goes_to_the_least_invasive(shortcut, monkeypatch):
    """Every candidate scoring the same on select swaps (the meter patched to a constant): the full-lr fine-tune
    does not beat the re-fit head, so its fifth-lr fallback runs, and of the three tied candidates the head re-fit —
    which rewrites no feature — is chosen (treat v7; before, the first candidate run won a tie)."""
    data, model = shortcut
    measured = arms.evaluate
    monkeypatch.setattr(arms, "evaluate", lambda *args, **kwargs: {**measured(*args, **kwargs), "accuracy": 0.5})
    result = api.treat(model, None, data, annotate_per_class=10, epochs=1, batch_size=32, lr=0.05)
    assert [c["name"] for c in result.candidates] == ["counterfactual", "last-layer", "counterfactual-low-lr"]
    assert {c["select_swap"] for c in result.candidates} == {0.5}
    assert result.chosen == "last-layer"
    changed = [n for n, p in result.treated.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert changed and all(n.startswith(changed[0].split(".")[0]) for n in changed), "only the head may change"


@pytest.mark.parametrize("scores, fallback, chosen", [
    ({"counterfactual": 0.9, "last-layer": 0.8}, False, "counterfactual"),
    ({"counterfactual": 0.8, "last-layer": 0.8}, True, "last-layer"),
    ({"counterfactual": 0.7, "last-layer": 0.8}, True, "last-layer"),
    ({"counterfactual": 0.7, "last-layer": 0.8, "counterfactual-low-lr": 0.8}, False, "last-layer"),
    ({"counterfactual": 0.9, "last-layer": 0.8, "counterfactual-low-lr": 0.9}, False, "counterfactual-low-lr"),
    ({"counterfactual": 0.9}, False, "counterfactual"),
])
def test_fallback_and_choice_by_hand(scores, fallback, chosen):
    assert needs_fallback("counterfactual", scores) is fallback
    assert choose(scores) == chosen
