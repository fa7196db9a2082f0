import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modeldoctor.core.errors import UserError
from modeldoctor.core.replay import draw_noise
from modeldoctor.doctor.diagnosis import correlation_index, diagnose, sample_seeds
from modeldoctor.io.diagnosis_files import load_diagnosis, save_diagnosis
from modeldoctor.models.zoo import build_model
from toys import Items

pytestmark = pytest.mark.usefixtures("one_thread")


class GapLinear(nn.Module):
    def __init__(self, classes: int = 3, channels: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def _items(n: int = 12, classes: int = 3, channels: int = 2, size: int = 6, seed: int = 0) -> Items:
    g = torch.Generator().manual_seed(seed)
    return Items(torch.randn(n, channels, size, size, generator=g), torch.arange(n) % classes)


@pytest.mark.parametrize("reduce", ["abs", "relu"])
def test_gap_linear_tail_gives_the_weights(reduce):
    """Tail = global average pool + linear: ∂y_n/∂m_k(h,w) = W_nk/(HW), summed over HW positions → W_nk."""
    torch.manual_seed(0)
    model = GapLinear().eval()
    d = diagnose(model, _items(), "conv", noise_draws=1, delta=0.0, target="label", require_correct=False,
                 reduce=reduce, batch_size=5)
    W = model.fc.weight.detach()
    expected = W.abs() if reduce == "abs" else W.clamp_min(0)
    assert torch.allclose(d.correlation("conv"), expected, atol=1e-6)
    assert d.layers["conv"].counts.tolist() == [4, 4, 4]


def _resnet() -> nn.Module:
    torch.manual_seed(1)
    return build_model("resnet20", 3, 2).eval()


def test_diagnose_equals_naive_per_sample_loop_on_resnet():
    model, data, layer = _resnet(), _items(9, size=8), "layer2.0.conv2"
    d = diagnose(model, data, layer, noise_draws=3, delta=0.2, target="label", require_correct=False, batch_size=4, seed=7)
    feats = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: feats.append(o.detach().clone()))
    with torch.no_grad():
        model(data.x)
    handle.remove()
    rms = float(feats[0].double().square().mean().sqrt())
    assert d.layers[layer].scale == pytest.approx(rms, rel=1e-6)
    sums = torch.zeros(3, feats[0].shape[1], dtype=torch.float64)
    for i in range(len(data)):
        noise = draw_noise(feats[0][i:i + 1], 3, 0.2 * rms, sample_seeds=sample_seeds(torch.tensor([i]), 7, layer))
        grads = []
        for j in range(3):
            holder = {}

            def hook(module, inputs, output, j=j, holder=holder, noise=noise):
                holder["z"] = (output.detach() + noise[j]).requires_grad_(True)
                return holder["z"] * 1

            h = model.get_submodule(layer).register_forward_hook(hook)
            out = model(data.x[i:i + 1])
            h.remove()
            grads.append(torch.autograd.grad(out[0, int(data.y[i])], holder["z"])[0])
        sums[int(data.y[i])] += correlation_index(torch.stack(grads)).double()[0]
    assert torch.allclose(d.layers[layer].sums, sums, rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_batch_size_or_loader():
    model, data = _resnet(), _items(10, size=8)
    kw = dict(layers=["layer1.1.conv1", "layer3.2.conv2"], noise_draws=4, delta=0.3, target="label",
              require_correct=False)
    a = diagnose(model, data, batch_size=3, **kw)
    b = diagnose(model, DataLoader(data, batch_size=7), **kw)
    for name in a.layers:
        assert torch.allclose(a.layers[name].sums, b.layers[name].sums, rtol=1e-5, atol=1e-7)
        assert a.layers[name].scale == pytest.approx(b.layers[name].scale, rel=1e-6)  # float32 convs round per batch
    assert a.layers["layer1.1.conv1"].delta > 0


def test_zero_delta_makes_noise_draws_irrelevant():
    model, data = _resnet(), _items(6, size=8)
    kw = dict(layers="layer2.2.conv1", delta=0.0, target="label", require_correct=False)
    one, five = diagnose(model, data, noise_draws=1, **kw), diagnose(model, data, noise_draws=5, **kw)
    assert torch.allclose(one.correlation("layer2.2.conv1"), five.correlation("layer2.2.conv1"), rtol=1e-5, atol=1e-7)


def test_merge_of_two_halves_equals_the_whole_and_save_load_round_trip(tmp_path):
    model, data = _resnet(), _items(12, size=8)
    kw = dict(layers=["layer3.0.conv1", "layer3.2.conv2"], noise_draws=2, delta=0.05, delta_mode="absolute",
              target="label", require_correct=False, profiles_per_class=2)
    whole = diagnose(model, data, **kw)
    first = diagnose(model, torch.utils.data.Subset(data, range(6)), **kw)
    second = diagnose(model, _Offset(data, 6), **kw)
    merged = first.merge(second)
    for name in whole.layers:
        assert torch.equal(merged.layers[name].counts, whole.layers[name].counts)
        assert torch.allclose(merged.layers[name].sums, whole.layers[name].sums, rtol=1e-6, atol=1e-8)
    save_diagnosis(whole, tmp_path / "d")
    back = load_diagnosis(str(tmp_path / "d"), model)
    assert torch.equal(back.layers["layer3.2.conv2"].sums, whole.layers["layer3.2.conv2"].sums)
    assert back.options == whole.options and back.profile_ids == whole.profile_ids
    assert torch.equal(back.relevant("layer3.2.conv2"), whole.relevant("layer3.2.conv2"))
    other = build_model("resnet20", 4, 2)
    with pytest.raises(UserError, match="3 classes in the diagnosis, 4 in the model"):
        load_diagnosis(str(tmp_path / "d"), other)
    with pytest.raises(UserError, match="delta_mode"):
        whole.merge(diagnose(model, data, **{**kw, "delta_mode": "relative"}))


class _Offset(Dataset):
    """The second half of a dataset, keeping the original indices (as a second process would)."""

    def __init__(self, data: Items, start: int) -> None:
        self.data, self.start = data, start

    def __len__(self) -> int:
        return len(self.data) - self.start

    def __getitem__(self, i: int):
        x, y, _ = self.data[self.start + i]
        return x, y, self.start + i


def _snapshot(model: nn.Module) -> dict:
    return {"training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "inplace": [getattr(m, "inplace", None) for m in model.modules()]}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class RaisesOnSecondCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom on the second call")
        return x


def _prepared_model() -> nn.Module:
    model = _resnet().train()
    model.layer1[0].bn1.eval()  # a frozen BatchNorm: mixed modes must survive
    model.fc.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    return model


@pytest.mark.parametrize("fallback", [False, True])
def test_model_left_as_found_after_success_and_after_an_exception(fallback):
    model, data = _prepared_model(), _items(6, size=8)
    before = _snapshot(model)
    diagnose(model, data, ["layer1.0.conv1", "layer3.2.conv2"], noise_draws=2, target="label", require_correct=False)
    after = _snapshot(model)
    assert _hooks(model) == 0
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]
    assert after["inplace"] == before["inplace"]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(after["grad"], before["grad"]))

    model.layer2[0].bn1 = nn.Sequential(model.layer2[0].bn1, RaisesOnSecondCall())
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="second call"):
        diagnose(model, data, "layer3.2.conv2", noise_draws=2, target="label", require_correct=False,
                 force_fallback=fallback)
    after = _snapshot(model)
    assert _hooks(model) == 0
    assert after["training"] == before["training"] and after["inplace"] == before["inplace"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(after["grad"], before["grad"]))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def test_layer_errors_are_user_errors():
    data = _items(3)
    with pytest.raises(UserError, match="runs 2 times"):
        diagnose(Twice(), data, "conv", noise_draws=1)
    with pytest.raises(UserError, match="unknown layer 'nope'"):
        diagnose(GapLinear(), data, "nope", noise_draws=1)
    with pytest.raises(UserError, match="not \\(batch, channels, height, width\\)"):
        diagnose(GapLinear(), data, "fc", noise_draws=1)


def test_options_configured_once_equal_the_keyword_call(mnist5k):
    from modeldoctor.doctor.diagnosis import DiagnosisOptions

    torch.manual_seed(0)
    model = build_model("simple-cnn", 10, 1, 28)
    split = mnist5k.train
    by_keywords = diagnose(model, split, noise_draws=2, samples_per_class=3, require_correct=False, seed=4)
    options = DiagnosisOptions(noise_draws=2, samples_per_class=3, require_correct=False, seed=4)
    by_options = diagnose(model, split, options=options)
    assert by_options.options == options == by_keywords.options
    for name, layer in by_keywords.layers.items():
        assert torch.allclose(layer.sums, by_options.layers[name].sums, rtol=1e-6, atol=1e-9), name


def test_options_and_option_keywords_together_are_refused():
    from modeldoctor.doctor.diagnosis import DiagnosisOptions

    with pytest.raises(UserError, match="options= and individual option arguments"):
        diagnose(GapLinear(), _items(), "conv", noise_draws=3, options=DiagnosisOptions(noise_draws=2))
