"""Model Doctor's constraints inside a user's own PyTorch Lightning training (optional extra ``lightning``).

:class:`ModelDoctorCallback` adds Eq. 7's constraint terms ``λ_sp Σ L_sp + λ_ch Σ L_ch`` to whatever loss the
user's ``LightningModule.training_step`` returns.  Gradients are linear, so instead of editing the user's
loss the callback adds ``∇_θ (constraint terms)`` to ``.grad`` right after Lightning's backward pass
(``on_after_backward``), computed on the same batch from :func:`modeldoctor.doctor.treatment.treatment_loss`
(one clean forward plus J noisy replays per constrained layer, double backpropagation).

Batches are ``(x, y)`` or ``(x, y, index)``; the space-wise constraint needs the index form (masks are looked
up by split index in a :class:`~modeldoctor.doctor.treatment.MaskBank`), the channel-wise one only the diagnosis.
The extra forward runs with BatchNorm momentum 0, so running statistics move once per step, as without the
callback.  With gradient accumulation the added gradient is divided by the accumulation count, as Lightning
divides the loss.  Mixed precision is not supported (the added gradient would bypass the loss scaler).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import unpack_batch
from modeldoctor.doctor.annotation import MaskBank
from modeldoctor.doctor.diagnosis import Diagnosis
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss


class ModelDoctorCallback(pl.Callback):
    """Add the channel-wise (Eq. 5) and space-wise (Eq. 6) constraints to a LightningModule's training.

    ``model_attr`` names the classifier inside the LightningModule (default: the LightningModule itself,
    which must then return logits from ``forward``).  ``config`` holds the constraint choice and weights;
    ``diagnosis`` gives the relevant kernels (channel-wise), ``masks`` the annotated images (space-wise).
    """

    def __init__(self, config: TreatConfig, diagnosis: Diagnosis | None = None, masks: MaskBank | None = None,
                 model_attr: str | None = None) -> None:
        super().__init__()
        self.config, self.diagnosis, self.masks, self.model_attr = config, diagnosis, masks, model_attr
        self._batch: Any = None
        self._loss_fn: TreatmentLoss | None = None
        self._relevant: dict[str, torch.Tensor] | None = None
        self.last_terms: float = 0.0  # the constraint terms of the latest step (logged as "modeldoctor/constraints")

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        return getattr(pl_module, self.model_attr) if self.model_attr else pl_module

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "16" in str(trainer.precision):
            raise UserError("ModelDoctorCallback does not support mixed precision; use precision='32-true'")
        if "channel" in self.config.constraints:
            if self.diagnosis is None:
                raise UserError("the channel-wise constraint needs a diagnosis: ModelDoctorCallback(cfg, diagnosis=...)")
            layers = self.config.channel_layers or list(self.diagnosis.layers)[-1:]
            self._relevant = {name: self.diagnosis.relevant(name) for name in layers}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loss_fn is not None:
            self._loss_fn.close()
            self._loss_fn = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch = batch

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None:
            return
        model = self._model(pl_module)
        x, y, index = unpack_batch(self._batch)
        if self._loss_fn is None:  # built on the first batch: the default layers depend on the input size
            shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
            self._loss_fn = TreatmentLoss(model, self.config, shape, self._relevant, self.masks)
        with _frozen_batchnorm_statistics(model):
            total, logits = self._loss_fn(model, x, y, index)
        terms = total - F.cross_entropy(logits, y)  # the treatment loss minus its L_orig: λ-weighted constraints
        self.last_terms = float(terms.detach())
        pl_module.log("modeldoctor/constraints", self.last_terms, on_step=True, prog_bar=False)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(terms, params, allow_unused=True)
        scale = 1.0 / max(1, trainer.accumulate_grad_batches)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g * scale
                else:
                    p.grad.add_(g, alpha=scale)
        self._batch = None


@contextlib.contextmanager
def _frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics as usual but leave their running buffers unchanged."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)
