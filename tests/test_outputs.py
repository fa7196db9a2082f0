"""core/outputs.py: the main logits out of every container a model's forward may return."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.core.outputs import select_logits

LOGITS = torch.arange(6.0).view(2, 3)
Inception = namedtuple("Inception", ["logits", "aux_logits"])


@pytest.mark.parametrize("output", [LOGITS, (LOGITS, torch.zeros(2, 3)), [LOGITS], Inception(LOGITS, None),
                                    SimpleNamespace(logits=LOGITS, hidden=None), {"logits": LOGITS, "aux": 0}],
                         ids=["tensor", "tuple", "list", "namedtuple", "attribute", "dict"])
def test_the_main_logits_from_every_container(output: object) -> None:
    assert select_logits(output) is LOGITS


@pytest.mark.parametrize("output", [(), {"scores": LOGITS}, ("text",), None])
def test_no_logits_is_a_one_line_user_error(output: object) -> None:
    with pytest.raises(UserError, match="cannot find logits in a model output of type"):
        select_logits(output)
