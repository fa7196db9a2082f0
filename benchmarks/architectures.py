"""Every torchvision classification builder and a few timm families through train (1 step) → diagnose → treat
(1 step), each in its own process (one architecture's crash or memory cannot take down the rest).

Writes benchmarks/results/architectures.json (docs/architectures.md generates its table from it) and architectures.md;
the last stdout line is one JSON object: how many passed, were refused (no layer yields a spatial feature map) and
failed.  Transformers (torchvision vit_* / swin_* / swin_v2_* / maxvit_t, timm vit / deit / swin / maxvit /
efficientformer) go through the same pipeline on token maps (core/tokens.py).

    python benchmarks/architectures.py [--only resnet18,timm:convnext_nano] [--timeout 900]

``--only`` replaces those rows of an existing architectures.json and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from modeldoctor.api.architectures import architecture_specs

RESULTS = Path(__file__).parent / "results"
CHILD = ("import json, sys; from modeldoctor.api.architectures import check_architecture; "
         "print(json.dumps(check_architecture(sys.argv[1], per_class=int(sys.argv[2]) or None).to_dict()))")


def run_one(spec: str, timeout: float) -> dict:
    """One spec in its own process; a crash or timeout is a row too, with the seconds it took.  A run killed for
    memory (SIGKILL) is tried once more on one image per class and split, and the row says so."""
    row = run_child(spec, timeout, 0)
    if row["train"] != "fail: exit -9":
        return row
    retry = run_child(spec, timeout, 1)
    retry["note"] = (f"killed for memory ({row['seconds']:.0f} s); retried on 1 image per class and split"
                     + (f": {retry['note']}" if retry.get("note") else "") + " (24 GB machine)")
    retry["seconds"] = round(row["seconds"] + retry["seconds"], 2)
    return retry


def run_child(spec: str, timeout: float, per_class: int) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, spec, str(per_class)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"spec": spec, "train": f"fail: over {timeout:.0f} s", "diagnose": "-", "treat": "-",
                "seconds": round(time.perf_counter() - started, 2)}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        why = " (SIGKILL: out of memory?)" if done.returncode == -9 else ""
        return {"spec": spec, "train": f"fail: exit {done.returncode}", "diagnose": "-", "treat": "-",
                "note": tail + why, "seconds": round(time.perf_counter() - started, 2)}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    head = "| model | min input (px) | run at (px) | default layer | train | diagnose | treat |\n" \
           "| --- | ---: | ---: | --- | --- | --- | --- |\n"
    return head + "".join(
        f"| {r['spec']} | {r.get('min_input') or '–'} | {r.get('input_size') or '–'} | "
        f"{'`' + r['default_layer'] + '`' if r.get('default_layer') else '–'} | {r['train']} | {r['diagnose']} | "
        f"{r['treat']} |\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma list of specs (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per architecture")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else architecture_specs()
    rows = []
    started = time.perf_counter()
    for spec in chosen:
        row = run_one(spec, args.timeout)
        rows.append(row)
        print(f"{spec}: train {row['train']}, diagnose {row['diagnose']}, treat {row['treat']} "
              f"({row.get('seconds', '?')} s)", file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "architectures.json"
    if args.only and path.is_file():  # a partial rerun replaces its rows and keeps the others
        fresh = {r["spec"]: r for r in rows}
        rows = [fresh.pop(r["spec"], r) for r in json.loads(path.read_text())] + list(fresh.values())
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "architectures.md").write_text(table(rows))
    passed = sum(r["train"] == r["diagnose"] == r["treat"] == "pass" for r in rows)
    refused = sum(r["train"] == "refused" for r in rows)
    print(json.dumps({"architectures": len(rows), "passed": passed, "refused": refused,
                      "failed": len(rows) - passed - refused, "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
