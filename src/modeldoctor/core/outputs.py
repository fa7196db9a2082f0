"""The one output selector: a model's main logits, whatever container its forward returns."""

from __future__ import annotations

from typing import Any

import torch

from modeldoctor.core.errors import UserError


def select_logits(output: Any) -> torch.Tensor:
    """The one output selector: main logits from a tensor, a (namedtuple) of outputs, or a ``.logits`` holder.

    GoogLeNet/Inception return ``(logits, aux...)`` in train mode when built with auxiliary heads.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise UserError(f"cannot find logits in a model output of type {type(output).__name__}; "
                    "return a tensor, a tuple starting with the logits, or an object with .logits")
