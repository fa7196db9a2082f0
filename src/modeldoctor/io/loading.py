"""A checkpoint and the data it was trained on, loaded together (the data normalised as the checkpoint was)."""

from __future__ import annotations

from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.sources import load_data
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint


def data_for(meta: CheckpointMeta, spec: str | None) -> DataBundle:
    """Load the data at the checkpoint's input size, normalised with the checkpoint's own statistics."""
    bundle = load_data(spec or meta.dataset, input_size=meta.input_size)
    if bundle.num_classes != meta.num_classes or bundle.in_channels != meta.in_channels:
        raise UserError(f"data {bundle.spec} has {bundle.num_classes} classes / {bundle.in_channels} channels but the "
                        f"checkpoint expects {meta.num_classes} / {meta.in_channels}; use the data it was trained on")
    for split in (bundle.train, bundle.val, bundle.test):
        split.mean = split.mean.new_tensor(meta.mean).view(-1, 1, 1)
        split.std = split.std.new_tensor(meta.std).view(-1, 1, 1)
    bundle.mean, bundle.std = list(meta.mean), list(meta.std)
    return bundle


def load_model_and_data(checkpoint: str, data_spec: str | None = None,
                        trust: bool = False) -> tuple[nn.Module, CheckpointMeta, DataBundle]:
    """The model of ``checkpoint`` and its data (``data_spec`` or the checkpoint's own)."""
    model, meta = load_checkpoint(checkpoint, trust=trust)
    return model, meta, data_for(meta, data_spec)
