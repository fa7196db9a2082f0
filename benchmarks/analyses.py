"""Issue 6's three analyses on mnist5k models: decomposed final layer, Discovery 2 detector, unit deletion.

Protocol: resnet20 (CIFAR-style, 1 input channel, 28 px) trained from scratch on mnist5k (3,500 / 500 / 1,000)
with the project defaults (SGD lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4, cosine, batch 128; best
epoch on validation), one model per seed; every analysis runs on every seed's model; mean ± std over seeds.

* decompose (Badola et al.): k₂ = 5 features per class, k₁ chosen on val from {1, 2, 3, 5, 8, 10, 16, 32} (best
  validation A_d; Algorithm 1 always on the training split); the validation r_A-vs-k curve over the whole grid;
  A_f, A_d, r_A, agreement on test; the paper's retraining (every parameter with the decomposed layer in place,
  one epoch; ours: SGD Nesterov lr 0.01, momentum 0.9, wd 5e-4, cosine, batch 128) and the matched control (the
  full network retrained the same way); beyond the paper, the same retraining for up to 3 epochs (epoch chosen on
  val) with its control; Table 8 essentiality on test; overlap of the influential sets with Model
  Doctor's relevant kernels of the last conv layer (diagnosis with T = 20 samples per class, J = 10, the
  diagnosis engine's default rule and top-k at equal size).
* stability (Model Doctor, Discovery 2): FGSM ε = 0.1 (raw pixels) on the first 200 test images, successful
  adversarials only.  "paper": the paper's absolute δ grid 0 … 0.3 at the last conv layer (Fig. 3).
* detectors (analyses/detectors.py): FGSM and PGD (10 steps) at ε = 0.1 on the first 200 validation and 200 test
  images; the noise detector — combined: logistic regression on the instability statistics (flip, margin drop,
  KL, logit std) of four evenly spaced conv layers at δ ∈ {0.5, 1, 2, 3}·(the layer's activation std), J = 10,
  fit on validation; single: the best one score at one layer or their mean — and feature squeezing (bit depth and
  median size) each choose their settings on the validation adversarials; AUROC on the test adversarials.
* ablation (Kim et al. §3.1, Table 1, via modeldoctor.analyses.ablation): units of the last conv layer ranked on val,
  deletion of the 5 worst / best units evaluated on test (the
  scaling rows are left to `modeldoctor ablate`: this machine is shared and the run must stay short).

Run: ``python benchmarks/analyses.py [--epochs 3] [--seeds 0,1,2] [--max-samples 200] [--only decompose]`` (one
thread).  Writes benchmarks/results/analyses.json after every seed; the last stdout line is a JSON summary.
``--only decompose`` retrains each seed's model and reruns only the decomposition, replacing the ``decompose``
entry of that seed's run in the existing results file (the detector and ablation entries are kept as they were);
``--only detectors`` likewise reruns only the stability, detector and ablation entries (decompose kept);
``--only detectors --draws 20`` adds a ``detectors_draws20`` entry beside them (J = 20, a sensitivity check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from modeldoctor.analyses.ablation import intervention_table, rank_units, unit_deletion
from modeldoctor.analyses.decompose import compare_with_diagnosis
from modeldoctor.analyses.decompose_protocol import RetrainProtocol, decompose_model, retrain
from modeldoctor.analyses.detectors import compare_detectors
from modeldoctor.analyses.stability import DEFAULT_DELTAS, discovery2
from modeldoctor.core.files import write_json
from modeldoctor.core.layers import default_layer
from modeldoctor.data.sources import load_data
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, evaluate, fit

RESULTS = Path(__file__).parent / "results" / "analyses.json"
DRAWS = 10  # noise draws J of the detectors; other values (--draws) are stored beside, as a sensitivity check
LONGER_EPOCHS = 3  # beyond the paper's one epoch: up to 3, the epoch chosen on val (the base model trains 3 epochs)


def log(msg: str) -> None:
    print(f"[analyses {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def train_model(seed: int, epochs: int, bundle):
    torch.manual_seed(seed)
    model = build_model("resnet20", bundle.num_classes, bundle.in_channels, bundle.input_size)
    _, train_s = timed(fit, model, bundle.train, bundle.val, bundle.num_classes, TrainConfig(epochs=epochs, seed=seed))
    test_acc = evaluate(model, bundle.test, bundle.num_classes)["accuracy"]
    log(f"seed {seed}: trained in {train_s:.0f}s, test {test_acc:.4f}")
    return model, {"seed": seed, "test_accuracy": test_acc, "train_seconds": train_s}


def decompose_part(model, bundle, seed: int) -> dict:
    last = default_layer(model, bundle.input_shape)
    dec, dec_s = timed(decompose_model, model, bundle, k2=5, protocol=RetrainProtocol(epochs=1, lr=0.01),
                       control=True, seed=seed)
    diagnosis, diag_s = timed(diagnose, model, bundle.train, layers=last, samples_per_class=20, noise_draws=10, seed=seed)
    decompose = {**{k: v for k, v in dec.summary.items() if k != "influential"}, "seconds": dec_s,
                 "diagnosis_overlap": compare_with_diagnosis(dec.mask, diagnosis, last), "diagnosis_seconds": diag_s}
    longer = RetrainProtocol(epochs=LONGER_EPOCHS, lr=0.01)
    decompose["longer"] = {"protocol": longer.to_dict()}
    for arm, mask in (("retrained", dec.mask), ("control", torch.ones_like(dec.mask))):
        net, info = retrain(model, mask, bundle, longer, {}, seed)
        decompose["longer"].update({f"accuracy_{arm}": evaluate(net, bundle.test, bundle.num_classes)["accuracy"],
                                    f"val_accuracy_{arm}": evaluate(net, bundle.val, bundle.num_classes)["accuracy"],
                                    f"best_epoch_{arm}": info["best_epoch"]})
    log(f"seed {seed}: decompose k1 {decompose['k1']} r_A {decompose['r_A']:.4f}, retrained "
        f"{decompose['accuracy_retrained']:.4f}, control {decompose['accuracy_control']:.4f}")
    return decompose


def detector_part(model, bundle, seed: int, max_samples: int, draws: int = DRAWS) -> dict:
    last = default_layer(model, bundle.input_shape)
    paper, paper_s = timed(discovery2, model, bundle.test, eps=0.1, layers=last, deltas=DEFAULT_DELTAS,
                           max_samples=max_samples, seed=seed)
    detectors = {}
    for attack in ("fgsm", "pgd"):
        detectors[attack], det_s = timed(compare_detectors, model, bundle.val, bundle.test, eps=0.1, attack=attack,
                                         max_samples=max_samples, seed=seed, draws=draws)
        detectors[attack]["seconds"] = det_s
        log(f"seed {seed}: {attack} (success {detectors[attack]['success_rate']['test']:.3f}) noise AUROC combined "
            f"{detectors[attack]['auroc_noise_combined']:.3f}, single {detectors[attack]['auroc_noise']:.3f} "
            f"(flip {detectors[attack]['auroc_noise_flip']:.3f}), feature squeezing "
            f"{detectors[attack]['auroc_feature_squeezing']:.3f}")

    ranking, rank_s = timed(unit_deletion, model, bundle.val, bundle.num_classes, layer=last)
    table, table_s = timed(intervention_table, model, {"test": bundle.test}, bundle.num_classes, last, ranking,
                           k=5, constants=())
    ablation = {"layer": last, "ranking_split": "val", "ranked": rank_units(ranking, bundle.class_names, top=5),
                "table": table, "seconds": rank_s + table_s}
    log(f"seed {seed}: ablation done")
    return {"stability": {"paper": {**paper, "seconds": paper_s}}, "detectors": detectors, "ablation": ablation}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(runs: list[dict]) -> dict:
    def pick(path: str) -> dict[str, float]:
        vals = []
        for run in runs:
            v = run
            for key in path.split("."):
                v = v[key]
            vals.append(float(v))
        return mean_std(vals)

    def ablation_delta(label: str) -> dict[str, float]:
        return mean_std([next(row["delta"]["test"] for row in run["ablation"]["table"] if row["intervention"] == label)
                         for run in runs])

    def detector_summary(key: str, attack: str) -> dict:
        found = {name: pick(f"{key}.{attack}.{path}") for name, path in (
            ("success_rate_test", "success_rate.test"), ("adversarials_test", "adversarials.test"),
            ("auroc_noise_flip", "auroc_noise_flip"), ("auroc_noise", "auroc_noise"),
            ("auroc_noise_combined", "auroc_noise_combined"),
            ("combined_auroc_calibration_cv", "combined_fit.auroc_calibration_cv"),
            ("auroc_feature_squeezing", "auroc_feature_squeezing"))}
        return {**found, **{name: [r[key][attack][name] for r in runs] for name in ("noise_choice", "squeezing_choice")}}

    dec = {k: pick(f"decompose.{k}") for k in ("accuracy_full", "accuracy_decomposed", "r_A", "agreement",
                                                "accuracy_retrained", "accuracy_control", "k1")}
    dec.update({f"{k}_{LONGER_EPOCHS}_epochs": pick(f"decompose.longer.{k}")
                for k in ("accuracy_retrained", "accuracy_control", "val_accuracy_retrained", "val_accuracy_control")})
    dec["retrained_minus_full"] = mean_std([r["decompose"]["accuracy_retrained"] - r["decompose"]["accuracy_full"]
                                            for r in runs])
    dec["retrained_minus_control"] = mean_std([r["decompose"]["accuracy_retrained"] - r["decompose"]["accuracy_control"]
                                               for r in runs])
    overlap = "decompose.diagnosis_overlap.top_k_same_size"
    dec.update({"essentiality_influential": pick("decompose.essentiality.influential_replaced"),
                "essentiality_non_influential": pick("decompose.essentiality.non_influential_replaced"),
                "jaccard_vs_diagnosis_topk": pick(f"{overlap}.mean_jaccard"),
                "intersection_vs_diagnosis_topk": pick(f"{overlap}.mean_intersection"),
                "chance_intersection_topk": pick(f"{overlap}.mean_chance_intersection"),
                "multiply_adds_ratio": pick("decompose.multiply_adds.ratio")})
    def model_accuracy(part: str) -> dict[str, float]:
        # A --only rerun retrains the seed's model and records it as "<part>_model"; the first run's
        # "test_accuracy" then belongs to a model none of the current entries came from.
        return mean_std([float(run.get(f"{part}_model", run)["test_accuracy"]) for run in runs])

    return {
        "seeds": [r["seed"] for r in runs],
        "test_accuracy": model_accuracy("decompose"),
        "test_accuracy_detectors_model": model_accuracy("detectors"),
        "decompose": dec,
        "stability": {"fgsm_success_rate": pick("stability.paper.fgsm.success_rate"),
                      "paper_auroc": pick("stability.paper.auroc"),
                      "paper_keep_false_at_best": pick("stability.paper.keep_false_at_best"),
                      },
        **{key: {attack: detector_summary(key, attack) for attack in ("fgsm", "pgd")}
           for key in ["detectors", *sorted({k for r in runs for k in r if k.startswith("detectors_draws")})]
           if all(key in r for r in runs)},
        "ablation_test_delta": {label: ablation_delta(label) for label in
                                ("delete worst-k", "delete best-k")},
    }


def compact(obj):
    """Means ± std only, for the one-line stdout summary."""
    if isinstance(obj, dict) and "mean" in obj and "std" in obj:
        return [round(obj["mean"], 4), round(obj["std"], 4)]
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-samples", type=int, default=200, help="test images used by the stability analysis")
    parser.add_argument("--draws", type=int, default=DRAWS,
                        help=f"detectors' noise draws J; with --only detectors, J ≠ {DRAWS} is stored beside the main "
                             "entry as detectors_drawsJ")
    parser.add_argument("--only", choices=["decompose", "detectors"], default=None,
                        help="rerun only this part and merge it into the existing results file's runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_data("mnist5k")
    previous = json.loads(RESULTS.read_text()) if args.only else {"runs": []}
    runs: list[dict] = list(previous["runs"])
    started = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        model, trained = train_model(seed, args.epochs, bundle)
        if args.only is None:
            runs.append({**trained, "decompose": decompose_part(model, bundle, seed),
                         **detector_part(model, bundle, seed, args.max_samples)})
            write_json(RESULTS, {"protocol": __doc__, "epochs": args.epochs, "summary": summarise(runs), "runs": runs,
                                 "seconds": time.perf_counter() - started})
            continue
        at = next((i for i, r in enumerate(runs) if r["seed"] == seed), None)
        if at is None:
            raise SystemExit(f"--only {args.only}: {RESULTS} has no run of seed {seed}; run the whole benchmark")
        if args.only == "decompose":
            runs[at] = {**runs[at], "decompose": decompose_part(model, bundle, seed), "decompose_model": trained}
        elif args.draws == DRAWS:  # a partial merge is written only at the end: it would mix old and new entries
            runs[at] = {**runs[at], **detector_part(model, bundle, seed, args.max_samples), "detectors_model": trained}
        else:
            part = detector_part(model, bundle, seed, args.max_samples, args.draws)
            runs[at] = {**runs[at], f"detectors_draws{args.draws}": part["detectors"]}
    summary = summarise(runs)
    if args.only:
        rerun = f"{args.only}_rerun_seconds" if args.draws == DRAWS else f"{args.only}_draws{args.draws}_rerun_seconds"
        write_json(RESULTS, {**previous, "protocol": __doc__, "epochs": args.epochs, "summary": summary, "runs": runs,
                             rerun: time.perf_counter() - started})
    fgsm = summary["detectors"]["fgsm"]
    headline = {"auroc_noise_flip": compact(fgsm["auroc_noise_flip"]), "auroc_noise": compact(fgsm["auroc_noise"]),
                "auroc_noise_combined": compact(fgsm["auroc_noise_combined"]),
                "auroc_feature_squeezing": compact(fgsm["auroc_feature_squeezing"]),
                "r_A": compact(summary["decompose"]["r_A"]),
                "accuracy_full": compact(summary["decompose"]["accuracy_full"]),
                "accuracy_retrained": compact(summary["decompose"]["accuracy_retrained"]),
                "accuracy_control": compact(summary["decompose"]["accuracy_control"])}
    print(json.dumps({"benchmark": "analyses", "seconds": round(time.perf_counter() - started), **headline,
                      **compact(summary)}))


if __name__ == "__main__":
    main()
