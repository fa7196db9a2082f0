"""Training defaults per model family (torchvision's reference recipes) and the chance-level warning."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import modeldoctor as md
from modeldoctor.cli.commands.train import config_from_args
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.training import make_optimizer, recipe_for


def _args(**given) -> argparse.Namespace:
    base = {"model": "resnet18", "optimizer": None, "lr": None, "weight_decay": None, "epochs": 1, "batch_size": 8,
            "schedule": "cosine", "seed": 0, "precise_bn": "auto"}
    return argparse.Namespace(**{**base, **given})


def test_family_recipes_and_what_the_user_gives_wins() -> None:
    assert recipe_for("convnext_tiny") == {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.05}
    assert recipe_for("timm:mobilenetv3_small_100")["optimizer"] == "sgd"  # timm's name has no underscore
    assert recipe_for("mobilenet_v3_small")["optimizer"] == "rmsprop"
    assert recipe_for("efficientnet_b0")["optimizer"] == recipe_for("resnet50")["optimizer"] == "sgd"
    assert config_from_args(_args(model="convnext_tiny")).optimizer == "adam"
    chosen = config_from_args(_args(model="convnext_tiny", optimizer="sgd"))
    assert (chosen.optimizer, chosen.lr) == ("sgd", 0.05)  # another optimiser brings its own lr
    chosen = config_from_args(_args(model="mobilenet_v3_small", lr=0.02, weight_decay=0.0))
    assert (chosen.optimizer, chosen.lr, chosen.weight_decay) == ("rmsprop", 0.02, 0.0)
    opt = make_optimizer(torch.nn.Linear(2, 2), chosen)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["eps"] == pytest.approx(0.0316)


def test_a_model_at_chance_ends_with_a_warning_naming_fixes() -> None:
    g = torch.Generator().manual_seed(0)
    labels = np.arange(60) % 3
    images = torch.rand(60, 1, 8, 8, generator=g)  # no signal at all: nothing can beat chance on val
    data = bundle_from_tensors("noise", images, labels, [f"n{i}" for i in range(60)], ["a", "b", "c"],
                               [np.arange(0, 30), np.arange(30, 45), np.arange(45, 60)], None)
    with pytest.warns(UserWarning, match="not 2 points above chance .*--input-size.*--lr.*--optimizer.*--epochs"):
        result = md.train("simple-cnn-narrow", data, md.TrainConfig(epochs=1, batch_size=30, lr=1e-6))
    assert len(result.warnings) == 1 and result.to_dict()["warnings"] == result.warnings


def test_precise_batchnorm_averages_the_batches_and_restores_momentum() -> None:
    from modeldoctor.training import recalibrate_batchnorm, wants_precise_bn

    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 4, 4, generator=g) * 3 + 1
    data = bundle_from_tensors("flat", images, np.arange(40) % 2, [f"f{i}" for i in range(40)], ["a", "b"],
                               [np.arange(0, 20), np.arange(20, 30), np.arange(30, 40)], None)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1, momentum=0.01), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    assert wants_precise_bn(model, "auto") and not wants_precise_bn(model, "off")
    assert not wants_precise_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(1)), "auto")
    model.eval()
    recalibrate_batchnorm(model, data.train, batch_size=5)
    normalised = torch.stack([data.train[i][0] for i in range(20)])
    batch_means = normalised.view(4, 5, -1).mean((1, 2))  # 4 batches of 5 (order does not change the average)
    bn = model[0]
    assert torch.allclose(bn.running_mean, batch_means.mean().view(1), atol=1e-6)
    assert bn.momentum == 0.01 and not model.training and not bn.training
