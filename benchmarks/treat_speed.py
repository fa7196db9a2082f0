"""Cost of one treatment step (Eq. 7: channel + space on the last conv layer, J = 10; and the shipped default's
counterfactual step) vs a plain fine-tune step, and of the whole default ``treat`` (candidate search and verdict
included) vs its control arm.

ResNet-18 (torchvision) at 32 px, batch 32, every image annotated.  Time: median over interleaved steps
(both cases in the same process, same load).  Memory: bytes of every tensor autograd saves for the backward
pass during one step (torch.autograd.graph.saved_tensors_hooks), which is what grows a training step's
peak memory; weights and optimiser state are the same in both cases and are not counted.
Last stdout line: JSON with ratio_time and ratio_memory (treat / plain).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from modeldoctor import api  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.bundle import ImageSplit  # noqa: E402
from modeldoctor.data.sources import load_data  # noqa: E402
from modeldoctor.doctor.annotation import MaskBank  # noqa: E402
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, treat_step  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import TrainConfig, cross_entropy_loss, fit  # noqa: E402

LAYER = "layer4.1.conv2"
BATCH, SIZE, J, STEPS = 32, 32, 10, 6


def saved_bytes(loss_fn, model, x, y, idx) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = loss_fn(model, x, y, idx)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def timed(cases: dict, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict:
    """Median step seconds of each loss on the same batch, interleaved, and saved-tensor bytes of one step."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for step in range(STEPS + 1):
        for name, loss_fn in cases.items():
            started = time.perf_counter()
            treat_step(model, opt, loss_fn, x, y, idx)
            if step:  # the first round warms up (tracing, allocator)
                times[name].append(time.perf_counter() - started)
    memory = {name: saved_bytes(loss_fn, model.train(), x, y, idx) for name, loss_fn in cases.items()}
    out = {f"seconds_{n}": statistics.median(t) for n, t in times.items()}
    out |= {f"saved_bytes_{n}": m for n, m in memory.items()}
    out["ratio_time"] = out["seconds_treat"] / out["seconds_plain"]
    out["ratio_memory"] = memory["treat"] / memory["plain"]
    return out


def paper_setting() -> dict:
    """ResNet-18, 32 px: channel + space on the last conv, J = 10, every image annotated."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, SIZE)
    x, y, idx = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,)), torch.arange(BATCH)
    masks = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    bank = MaskBank(masks, torch.ones(BATCH, dtype=torch.bool), list(range(BATCH)))
    relevant = {LAYER: torch.rand(10, 512) > 0.8}
    cfg = TreatConfig(constraints=("space", "channel"), space_layers=[LAYER], channel_layers=[LAYER],
                      noise_draws=J, expansion=3, form="share", lam_space=1.0, lam_channel=1.0, mix_annotated=0)
    treated = TreatmentLoss(model, cfg, (3, SIZE, SIZE), relevant, bank)
    return {"model": "resnet18", "input_size": SIZE, "batch": BATCH, "noise_draws": J, "layer": LAYER,
            **timed({"plain": cross_entropy_loss, "treat": treated}, model, x, y, idx)}


def shipped_default(composites: int = TreatConfig.composites) -> dict:
    """The shipped default's step (the counterfactual term: ``composites`` composites appended to the batch) on the
    shortcut benchmark's shape: simple-cnn-s2 at 48 px, 64 images plus 16 mixed-in annotated ones.  The step
    processes (80 + composites) / 80 times the images of a plain step; ``ratio_time_per_image`` divides that out."""
    torch.manual_seed(0)
    model = build_model("simple-cnn-s2", 10, 1, 48)
    n = 80
    images = torch.rand(n, 1, 48, 48)
    x, y, idx = (images - 0.5) / 0.25, torch.arange(n) % 10, torch.arange(n)
    masks = torch.zeros(n, 48, 48, dtype=torch.bool)
    masks[:, 12:36, 12:36] = True
    split = ImageSplit(y.tolist(), [str(i) for i in range(n)], [0.5], [0.25], images=images)
    bank = MaskBank(masks, torch.ones(n, dtype=torch.bool), list(range(n)))
    treated = TreatmentLoss(model, TreatConfig(composites=composites), (1, 48, 48), None, bank, split=split)
    out = timed({"plain": cross_entropy_loss, "treat": treated}, model, x, y, idx)
    images = (n + composites) / n
    return {"model": "simple-cnn-s2", "input_size": 48, "batch": n, "composites": composites, **out,
            "ratio_images": images, "ratio_time_per_image": out["ratio_time"] / images}


def whole_treat(spec: str = "shortcut-mnist", **options: Any) -> dict:
    """``api.treat`` with every default (control, candidate search, verdict) but ``options`` on ``spec``,
    simple-cnn-s2 trained 4 epochs: the whole command's wall time against its control arm's.  On the clean model
    (``spec`` ending in ``:clean``) the re-fit head beats the counterfactual fine-tune, so its low-lr fallback runs
    too; with ``early_stop_margin=None`` the losing fine-tune also runs to its end (treat v4): the worst case."""
    data = load_data(spec)
    torch.manual_seed(0)
    model = build_model("simple-cnn-s2", 10, 1, 48)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05)
    fit(model, data.train, data.val, 10, cfg)
    result = api.treat(model, None, data, train_config=cfg, **options)
    return {"model": "simple-cnn-s2", "data": spec, "epochs": 3, "chosen": result.chosen, **options,
            "candidates": [c["name"] for c in result.candidates],
            "stopped_after": {c["name"]: c["stopped_after"] for c in result.candidates if "stopped_after" in c},
            "seconds_control": result.seconds["control"], "seconds_total": result.seconds["total"],
            "ratio_time": result.seconds["total"] / result.seconds["control"]}


def main() -> None:
    result = {"paper_setting": paper_setting(), "shipped_default": shipped_default(), "whole_treat": whole_treat(),
              "whole_treat_fallback": whole_treat("shortcut-mnist:clean"),
              "whole_treat_fallback_no_early_stop": whole_treat("shortcut-mnist:clean", early_stop_margin=None),
              "memory_method": "bytes of tensors saved for backward (saved_tensors_hooks) in one step"}
    write_json(Path(__file__).resolve().parent / "results" / "treat_speed.json", result)
    print(json.dumps({k: {m: round(v, 3) for m, v in r.items() if m.startswith("ratio")}
                      for k, r in result.items() if isinstance(r, dict)}))

if __name__ == "__main__":
    main()
