"""Why does the swap meter under-read on spot-mnist? (issue 18, development seeds only, no training)

On spot-mnist the clean-trained model reads about 82% on the background-swap composites against 94% on test, and the
meter then ranks the counterfactual fine-tune below the re-fit head on seeds where test ranks them the other way.
Spot-mnist's cue is a bright symbol beside the digit; a composite keeps the donor's symbol where the donor had it,
which may now sit inside the pasted digit's box, next to its strokes — a layout the clean model never saw.

Per family (spot-, border-, shortcut-mnist), development seed (100, 101) and simple-cnn-s2, on the meter's own
select composites (``search.meter_splits``, as ``treat`` builds them): the share of composites whose donor
background has salient pixels (beyond 4 robust deviations of its median) inside the object's bounding box grown by
``GROW`` pixels, and the clean and vanilla models' accuracy on those composites and on the rest, beside the clean
model's test accuracy.  Development seeds only: nothing here chooses anything the matrix reports.

Usage: python benchmarks/spot_meter.py     Last stdout line: JSON {family: {share, clean_inside, clean_outside,
clean_all, clean_test}} (means over the seeds).
"""

from __future__ import annotations

import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import baseline  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.masks import expand_mask  # noqa: E402
from modeldoctor.data.swap import erase_object  # noqa: E402
from modeldoctor.doctor.search import meter_splits  # noqa: E402
from modeldoctor.training import evaluate, predict  # noqa: E402
from treatment_matrix import DEV_SEEDS, RESULTS, box_masks, cell_masks, held_out  # noqa: E402

FAMILIES = ("spot-mnist", "border-mnist", "shortcut-mnist")
ARCH = "simple-cnn-s2"
GROW = 3


def salient(image: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: pixels with a channel beyond 4 robust deviations (1.4826 · MAD) of the image's median."""
    values = image.flatten(1)
    median = values.median(1, keepdim=True).values
    spread = 1.4826 * (values - median).abs().median(1, keepdim=True).values
    return ((image - median.view(-1, 1, 1)).abs() > (4 * spread + 0.02).view(-1, 1, 1)).any(0)


def seed_row(family: str, seed: int) -> dict[str, Any]:
    vanilla, data = baseline(family, ARCH, seed)
    clean, _ = baseline(f"{family}:clean", ARCH, seed)
    bank, held = held_out(vanilla, data, cell_masks(data, "exact"), seed)
    composites = meter_splits(data.train, bank, held, seed, "own").select  # the shipped meter: objects where they were
    assert composites is not None
    index = {sid: i for i, sid in enumerate(data.train.ids)}
    by_index = bank.by_index()
    near = {i: expand_mask(box, GROW) for i, box in box_masks({i: by_index[i] for i in held}).items()}
    backgrounds: dict[int, torch.Tensor] = {}
    inside = []
    for sid in composites.ids:
        obj, donor = (index[part] for part in sid.split("@"))
        if donor not in backgrounds:
            backgrounds[donor] = salient(erase_object(data.train.raw(donor), by_index[donor]))
        inside.append(bool((near[obj] & backgrounds[donor]).any()))
    flags = torch.tensor(inside)
    row: dict[str, Any] = {"seed": seed, "composites": len(flags), "share": float(flags.float().mean())}
    for name, model in (("clean", clean), ("vanilla", vanilla)):
        logits, labels = predict(model, composites)
        correct = (logits.argmax(1) == labels).float()
        row[f"{name}_all"] = float(correct.mean())
        row[f"{name}_inside"] = float(correct[flags].mean()) if flags.any() else None
        row[f"{name}_outside"] = float(correct[~flags].mean()) if (~flags).any() else None
    row["clean_test"] = evaluate(clean, data.test, data.num_classes)["accuracy"]
    return row


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def main() -> None:
    result = {family: [seed_row(family, seed) for seed in DEV_SEEDS] for family in FAMILIES}
    write_json(RESULTS / "spot_meter.json", {"grow": GROW, "arch": ARCH, "seeds": list(DEV_SEEDS), "rows": result})
    keys = ("share", "clean_inside", "clean_outside", "clean_all", "clean_test")
    print(json.dumps({family: {k: None if (m := mean(rows, k)) is None else round(m, 3) for k in keys}
                      for family, rows in result.items()}))


if __name__ == "__main__":
    main()
