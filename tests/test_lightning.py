"""The Lightning callback adds the constraints' gradients to a user's own LightningModule training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from modeldoctor.doctor.diagnosis import diagnose  # noqa: E402
from modeldoctor.doctor.treatment import TreatConfig  # noqa: E402
from modeldoctor.lightning import ModelDoctorCallback  # noqa: E402
from modeldoctor.models.zoo import SimpleCNN  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SimpleCNN(num_classes=3, in_channels=1, width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: the step leaves weights equal across runs


class GradientRecorder(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).clone())


def _data() -> tuple[TensorDataset, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 12, 12, generator=g), torch.arange(24) % 3
    return TensorDataset(x, y, torch.arange(24)), DataLoader(TensorDataset(x, y), batch_size=12)


def _gradients(callbacks: list) -> torch.Tensor:
    torch.manual_seed(0)
    module = Classifier()
    recorder = GradientRecorder()
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks + [recorder])
    trainer.fit(module, _data()[1])
    return recorder.grads[0]


def test_callback_changes_the_gradients_and_zero_weight_does_not() -> None:
    torch.manual_seed(0)
    diagnosis = diagnose(Classifier().net, _data()[0], samples_per_class=4, noise_draws=2, require_correct=False)
    plain = _gradients([])

    def callback(lam: float) -> ModelDoctorCallback:
        cfg = TreatConfig(constraints=("channel",), lam_channel=lam, noise_draws=2, form="paper")
        return ModelDoctorCallback(cfg, diagnosis, model_attr="net")

    unchanged = _gradients([callback(0.0)])
    changed = _gradients([callback(10.0)])
    torch.testing.assert_close(unchanged, plain)
    assert (changed - plain).abs().max() > 1e-4
