import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.replay import NoiseReplay, draw_noise
from modeldoctor.models.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", 4, 1).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the check is not vacuous
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _naive(model: nn.Module, x: torch.Tensor, layer: str, cls: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """J full forward passes, noise added by a hook; grads w.r.t. the noisy feature map (J, B, C, H, W)."""
    grads = []
    for j in range(noise.shape[0]):
        holder = {}

        def hook(module, inputs, output, j=j, holder=holder):
            holder["z"] = (output.detach() + noise[j]).requires_grad_(True)
            return holder["z"] * 1  # never hand a leaf to the in-place ReLU that follows

        handle = model.get_submodule(layer).register_forward_hook(hook)
        try:
            out = model(x)
        finally:
            handle.remove()
        grads.append(torch.autograd.grad(out.gather(1, cls.view(-1, 1)).sum(), holder["z"])[0])
    return torch.stack(grads)


@pytest.mark.parametrize("layer", ["layer1.0.conv1", "layer2.0.conv2", "layer3.2.conv2"])
def test_replay_equals_naive_full_passes_on_resnet_with_skips(layer):
    model = _resnet()
    x = torch.randn(3, 1, 16, 16)
    replay = NoiseReplay(model, [layer])
    assert not replay.uses_fallback
    with torch.no_grad():
        state = replay.forward(x)
    cls = state.logits.argmax(1)
    seeds = torch.tensor([11, 22, 33])
    got = replay.gradients(state, layer, [cls], noise_draws=4, delta=0.3, sample_seeds=seeds).grads[0]
    noise = draw_noise(state.features[layer], 4, 0.3, sample_seeds=seeds)
    want = _naive(model, x, layer, cls, noise)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert noise.abs().max() > 0


def test_fallback_equals_fx_path():
    model = _resnet()
    x = torch.randn(2, 1, 16, 16)
    layers = ["layer2.1.conv1", "layer3.2.conv2"]
    fast, slow = NoiseReplay(model, layers), NoiseReplay(model, layers, force_fallback=True)
    with torch.no_grad():
        s_fast, s_slow = fast.forward(x), slow.forward(x)
    cls = s_fast.logits.argmax(1)
    for layer in layers:
        for output in ("logit", "prob"):
            a = fast.gradients(s_fast, layer, [cls, 1 - cls.clamp(max=1)], 3, 0.2, output, sample_seeds=torch.tensor([5, 6]))
            b = slow.gradients(s_slow, layer, [cls, 1 - cls.clamp(max=1)], 3, 0.2, output, sample_seeds=torch.tensor([5, 6]))
            for ga, gb in zip(a.grads, b.grads):
                assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-5)
            assert torch.allclose(a.noisy_logits, b.noisy_logits, atol=1e-5)


def test_noise_is_per_sample_and_batch_independent():
    feature = torch.zeros(3, 2, 4, 4)
    full = draw_noise(feature, 5, 0.5, sample_seeds=torch.tensor([1, 2, 3]))
    part = draw_noise(feature[1:], 5, 0.5, sample_seeds=torch.tensor([2, 3]))
    assert torch.equal(full[:, 1:], part)
    assert full.abs().max() <= 0.5 and not torch.equal(full[:, 0], full[:, 1])


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)[:, :1]).mean((2, 3)))


def test_module_firing_twice_is_a_user_error():
    with pytest.raises(UserError, match="runs 2 times"):
        NoiseReplay(_Twice(), ["conv"]).forward(torch.randn(1, 1, 8, 8))
    with pytest.raises(UserError, match="more than once"):
        NoiseReplay(_Twice(), ["conv"], force_fallback=True).forward(torch.randn(1, 1, 8, 8))


def test_unknown_layer_is_a_user_error_naming_valid_layers():
    with pytest.raises(UserError, match="unknown layer 'layer9'.*layer3.2.conv2"):
        NoiseReplay(_resnet(), ["layer9"])
