"""Which builders train, diagnose and treat, transformers among them, and the training recipes behind them."""

from __future__ import annotations

import re
from typing import Any

from tables.base import Results, markdown_table, pct, source, table

TRANSFORMER = re.compile(r"(^|[_:])(swin|vit|maxvit|deit|efficientformer)")


def architecture_counts(r: Results) -> dict[str, Any]:
    rows = r["architectures"]
    passed = [x for x in rows if all(x[step] == "pass" for step in ("train", "diagnose", "treat"))]
    refused = [x for x in rows if x["train"] == "refused"]
    return {"rows": len(rows), "passed": len(passed), "refused": len(refused),
            "failed": len(rows) - len(passed) - len(refused),
            "minutes": sum(x.get("seconds") or 0.0 for x in rows) / 60,
            "torchvision": sum(not x["spec"].startswith("timm:") for x in passed),
            "timm": sum(x["spec"].startswith("timm:") for x in passed)}


def transformer_rows(r: Results) -> list[dict[str, Any]]:
    return [x for x in r["architectures"] if TRANSFORMER.search(x["spec"])]


def transformer_counts(r: Results) -> str:
    rows = transformer_rows(r)
    passed = [x["spec"] for x in rows if all(x[s] == "pass" for s in ("train", "diagnose", "treat"))]
    others = [f"{x['spec']} ({'killed for memory on this 24 GB machine' if x['train'] == 'fail: exit -9' else x['train']})"
              for x in rows if x["spec"] not in passed]
    return (f"transformers (read as token maps): {len(passed)} of {len(rows)} pass"
            + (f"; not passing: {', '.join(others)}" if others else ""))


def recipe_val(r: Results, file: str, model: str, arm: str) -> float:
    return next(x["val"] for x in r[file]["rows"] if x["model"] == model and x["arm"] == arm)


@table("recipes")
def recipes(r: Results) -> str:
    rows = []
    for file, note in (("recipes", ""), ("recipes_64px", ""), ("recipes_adamw", ""),
                       ("recipes_precise_bn", "precise BN")):
        for x in r[file]["rows"]:
            rows.append([x["model"], x["arm"], f"{x['optimizer']} lr {x['lr']:g}", x["input_size"],
                         "on" if note else "off", pct(x["val"]), f"`{file}.json`"])
    return (markdown_table(["model", "arm", "optimiser", "px", "precise BN", "val acc %", "file"], rows)
            + "\n\nmnist5k, 3 epochs from scratch, seed 0, validation accuracy.\n\n"
            + source("recipes", "recipes_64px", "recipes_adamw", "recipes_precise_bn"))


@table("architectures_summary")
def architectures_summary(r: Results) -> str:
    c = architecture_counts(r)
    return (f"**{c['passed']} of {c['rows']} builders pass** train → diagnose → treat ({c['torchvision']} torchvision, "
            f"{c['timm']} timm); {c['refused']} refused in one line; {c['failed']} failed. "
            f"The per-architecture times in `benchmarks/results/architectures.json` add up to "
            f"{c['minutes']:.0f} min on 2 shared cores.")


@table("architectures")
def architectures(r: Results) -> str:
    rows = [[x["spec"], x.get("min_input") or "–", x.get("input_size") or "–",
             f"`{x['default_layer']}`" if x.get("default_layer") else "–", x["train"], x["diagnose"], x["treat"],
             f"{x['seconds']:.0f}" if x.get("seconds") is not None else "–"] for x in r["architectures"]]
    return (markdown_table(["model", "min input (px)", "run at (px)", "default layer", "train", "diagnose", "treat", "s"],
                           rows, ["l", "r", "r", "l", "l", "l", "l", "r"]) + "\n\n" + source("architectures"))


@table("architectures_transformers")
def architectures_transformers(r: Results) -> str:
    rows = [[x["spec"], f"`{x['default_layer']}`" if x.get("default_layer") else "–", x["train"], x["diagnose"],
             x["treat"], f"{x['seconds']:.0f}" if x.get("seconds") is not None else "–", x.get("note", "")]
            for x in transformer_rows(r)]
    return (transformer_counts(r) + ".\n\n"
            + markdown_table(["model", "default layer", "train", "diagnose", "treat", "s", "note"], rows)
            + "\n\n" + source("architectures"))
