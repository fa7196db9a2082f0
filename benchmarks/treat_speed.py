"""Cost of one treatment step (Eq. 7: channel + space on the last conv layer, J = 10) vs a plain fine-tune step.

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

import torch

torch.set_num_threads(1)

from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.doctor.treatment import MaskBank, TreatConfig, treat_step, treatment_loss  # noqa: E402
from modeldoctor.models.zoo import build_model  # noqa: E402
from modeldoctor.training import cross_entropy_loss  # noqa: E402

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


def main() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, SIZE)
    x, y, idx = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,)), torch.arange(BATCH)
    masks = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    bank = MaskBank(masks, torch.ones(BATCH, dtype=torch.bool), list(range(BATCH)))
    relevant = {LAYER: torch.rand(10, 512) > 0.8}
    cfg = TreatConfig(constraints=("space", "channel"), space_layers=[LAYER], channel_layers=[LAYER],
                      noise_draws=J, expansion=3)
    treated = treatment_loss(model, cfg, relevant, bank)
    cases = {"plain": cross_entropy_loss, "treat": treated}
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for step in range(STEPS + 1):
        for name, loss_fn in cases.items():
            started = time.perf_counter()
            treat_step(model, opt, loss_fn, x, y, idx)
            if step:  # the first round warms up (tracing, allocator)
                times[name].append(time.perf_counter() - started)
    memory = {name: saved_bytes(loss_fn, model.train(), x, y, idx) for name, loss_fn in cases.items()}
    result = {"model": "resnet18", "input_size": SIZE, "batch": BATCH, "noise_draws": J, "layer": LAYER,
              "seconds_plain": statistics.median(times["plain"]), "seconds_treat": statistics.median(times["treat"]),
              "saved_bytes_plain": memory["plain"], "saved_bytes_treat": memory["treat"],
              "memory_method": "bytes of tensors saved for backward (saved_tensors_hooks) in one step"}
    result["ratio_time"] = result["seconds_treat"] / result["seconds_plain"]
    result["ratio_memory"] = memory["treat"] / memory["plain"]
    write_json(Path(__file__).resolve().parent / "results" / "treat_speed.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
