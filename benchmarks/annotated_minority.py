"""Whom does ``treat`` annotate on tint-mnist? (issue 18: why the counterfactual term helps an on-object shortcut)

On tint-mnist (the cue is the digit's hue, on the object) the counterfactual term alone lifts simple-cnn-s2 far
above its control (treatment_matrix.json), although its composites keep each object's hue and backgrounds carry
no class information.  ``treat`` annotates the vanilla model's least confident training images per class; on this
family those should mostly be the 10% whose hue is not their class's — the minority group that contradicts the
shortcut — so the composites re-weight it (hard-example up-weighting, as in JTT), not repair a background.

Per report seed (0–2, simple-cnn-s2, the matrix's vanilla models): the share of the 20 × 10 annotated images whose
hue differs from their class's hue, against that share over the whole training split.  No training.

Usage: python benchmarks/annotated_minority.py     Last stdout line: JSON {seed: share, "base": share}.
"""

from __future__ import annotations

import json

import numpy as np
import torch

torch.set_num_threads(1)

from matrix_baselines import baseline  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.digits import mnist_digits  # noqa: E402
from modeldoctor.data.tint import DEFAULTS, placements  # noqa: E402
from modeldoctor.doctor.annotation import lowest_confidence  # noqa: E402
from treatment_matrix import PER_CLASS, REPORT_SEEDS, RESULTS  # noqa: E402

ARCH = "simple-cnn-s2"


def main() -> None:
    _, labels, parts = mnist_digits()
    _, hues = placements(labels, parts, False, DEFAULTS)
    off_hue = np.asarray(hues) != np.asarray(labels)
    shares, base = {}, None
    for seed in REPORT_SEEDS:
        vanilla, data = baseline("tint-mnist", ARCH, seed)
        index = np.array([int(sid.rsplit("-", 1)[1]) for sid in data.train.ids])  # ids are tmnist-<global index>
        if not np.array_equal(np.asarray(labels)[index], np.asarray(data.train.labels)):
            raise SystemExit("tint-mnist ids no longer index mnist_digits(); update this benchmark")
        base = float(off_hue[index].mean())
        masked = [sid for sid in data.train.ids if sid in data.masks]
        chosen = lowest_confidence(vanilla, data.train, masked, PER_CLASS, data.num_classes)
        shares[seed] = float(off_hue[index[chosen]].mean())
    report = {"protocol": __doc__, "arch": ARCH, "per_class": PER_CLASS, "annotated_off_hue": shares,
              "train_off_hue": base}
    write_json(RESULTS / "annotated_minority.json", report)
    print(json.dumps({**{str(s): round(v, 3) for s, v in shares.items()}, "base": round(base or 0.0, 3)}))


if __name__ == "__main__":
    main()
