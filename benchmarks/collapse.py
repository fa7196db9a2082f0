"""Root cause of the space-wise collapse on resnet20 (issue 18): which factor rewrites the early layers?

On one development seed (default 100, never a report seed) of shortcut-mnist, the vanilla resnet20 from
``matrix_baselines.py`` is fine-tuned 3 epochs (SGD at the training lr, 16 annotated images per batch, last
epoch kept so damage is not hidden by checkpoint choice) under variants that each change one factor of the old
shipped default (space-wise, activation-share form, layer = deepest conv with receptive field ≤ ¼ input, λ auto =
10 × the annotated images' cross-entropy):

* ``control`` — cross-entropy alone; ``old_default``;
* ``lam_fraction_1`` — λ ten times smaller; ``last_conv`` — the space-wise layer moved to the last conv;
* ``frozen_bn`` — BatchNorm statistics and affine parameters frozen (eval-mode normalisation);
* ``clip_term`` — the constraint's loss capped at the batch cross-entropy each step (λ_eff = min(λ, CE/term));
* ``counterfactual`` — no gradient penalty: cross-entropy on annotated objects pasted onto other backgrounds.

Per variant: val / test / swap accuracy, ‖ΔW‖/‖W₀‖ and ‖W‖/‖W₀‖ for conv1 and each stage, the mean max-logit
(logit scale), λ.  Last stdout line: one JSON object.  Usage: python benchmarks/collapse.py [--seed 100] [--arch resnet20]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from matrix_baselines import baseline, recipe
from modeldoctor.core.files import write_json
from modeldoctor.data.masks import default_expansion
from modeldoctor.doctor.annotation import MaskBank, batch_mixer, holdout_split, lowest_confidence
from modeldoctor.doctor.arms import split_metrics, swap_split
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss
from modeldoctor.training import TrainConfig, fit, predict

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, Any]] = {
    "control": {"constraints": ()},
    "old_default": {},
    "lam_fraction_1": {"lam_fraction": 1.0},
    "last_conv": {"space_layers": "last"},
    "frozen_bn": {"frozen_bn": True},
    "clip_term": {"term_cap": 1.0},
    "counterfactual": {"constraints": ("counterfactual",)},
}


def norms(model: torch.nn.Module, start: torch.nn.Module, prefixes: list[str]) -> dict[str, dict[str, float]]:
    before = dict(start.named_parameters())
    out = {}
    for prefix in prefixes:
        names = [n for n, p in model.named_parameters() if n.startswith(prefix) and p.dim() == 4]
        w = torch.cat([dict(model.named_parameters())[n].detach().flatten() for n in names])
        w0 = torch.cat([before[n].detach().flatten() for n in names])
        out[prefix] = {"delta": float((w - w0).norm() / w0.norm()), "growth": float(w.norm() / w0.norm())}
    return out


def frozen_norms(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--family", default="shortcut-mnist")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vanilla, data = baseline(args.family, args.arch, args.seed)
    chosen = lowest_confidence(vanilla, data.train, list(data.masks), 20, data.num_classes)
    bank = MaskBank.build(data.train, data.masks, chosen, data.input_size)
    used, held = holdout_split(bank.pool, data.train.labels, 0.25, args.seed)
    swap = swap_split(data, bank, held, args.seed)
    train_bank = bank.restricted(used)
    run_cfg = TrainConfig(**{**recipe(args.arch, args.seed, epochs=3).to_dict()})
    input_shape = (data.in_channels, data.input_size, data.input_size)
    prefixes = ["conv1", "layer1", "layer2", "layer3"]
    out_path = RESULTS / f"collapse_{args.arch}.json"
    report: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    report.update({"protocol": __doc__, "seed": args.seed, "family": args.family, "arch": args.arch,
                   "original": {k: v["accuracy"] for k, v in split_metrics(vanilla, data.val, data.test, 10, swap).items()}})
    variants = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only.split(",")}
    for name, change in variants.items():
        started = time.time()
        change = dict(change)
        model = copy.deepcopy(vanilla)
        frozen = change.pop("frozen_bn", False)
        if change.get("space_layers") == "last":
            change["space_layers"] = [[n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]]
        cfg = TreatConfig(**{"constraints": ("space",), "expansion": default_expansion(data.input_size), **change})
        mixer = batch_mixer(data.train, train_bank.pool, cfg.mix_annotated, args.seed)
        with TreatmentLoss(model, cfg, input_shape, None, train_bank, mixer, split=data.train) as loss_fn:
            pool = train_bank.pool[:64]
            x = torch.stack([data.train[i][0] for i in pool])
            loss_fn.calibrate(x, data.train.labels[pool], train_bank.lookup(torch.tensor(pool))[0])
            if frozen:
                model.train = (lambda mode=True, m=model: (torch.nn.Module.train(m, mode), frozen_norms(m))[0])  # type: ignore[method-assign]
            fit(model, data.train, data.val, 10, run_cfg, loss_fn=loss_fn, keep="last", desc=name)
            lambdas = dict(loss_fn.lambdas)
        if frozen:
            del model.train
        logits, _ = predict(model, data.test)
        report.setdefault("variants", {})[name] = {
            "accuracy": {k: v["accuracy"] for k, v in split_metrics(model, data.val, data.test, 10, swap).items()},
            "weights": norms(model, vanilla, prefixes), "mean_max_logit": float(logits.max(1).values.mean()),
            "lambdas": lambdas, "seconds": round(time.time() - started, 1)}
        print(name, json.dumps(report["variants"][name]), flush=True)
        write_json(out_path, report)
    summary = {n: [round(v["accuracy"]["test"], 4), round(v["accuracy"]["swap"], 4),
                   round(v["weights"]["conv1"]["delta"], 2)] for n, v in report["variants"].items()}
    print(json.dumps({"arch": args.arch, "seed": args.seed, "test_swap_conv1delta": summary}))


if __name__ == "__main__":
    main()
