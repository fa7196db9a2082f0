"""The paper's claims: the treatment on clean data, Discovery 1 and 2, the decomposed layer, regularisers."""

from __future__ import annotations

from collections.abc import Callable

from tables.base import Results, markdown_table, num, pct, pm, source, table


@table("clean")
def clean_table(r: Results) -> str:
    rep = r["clean"]["report"]
    rows = [[name, v["train_images"], pct(v["original_test"], 2), pm(v["control"]), pm(v["channel"]),
             f"{100 * v['difference']['mean']:+.2f}"] for name, v in rep.items()]
    s = r["clean"]["settings"]
    return (markdown_table(["data", "training images", "original", "control", "+ channel-wise", "difference"], rows)
            + f"\n\n{s['model']}, {s['seeds']} seeds, {s['ft_epochs']} fine-tuning epochs; test accuracy %.\n\n"
            + source("clean"))


@table("discovery1")
def discovery1(r: Results) -> str:
    d = r["discovery1"]
    rows = [[f"`{x['layer']}`", x["depth"], x["channels"],
             "{:.1f} ({}–{})".format(x["mean_kernels_for_90pct_mass"], *x["min_max_kernels_for_90pct"]),
             num(x["fraction_of_channels"]), num(x["mean_gini"]), f"{x['relevant_per_class_mean']:.1f}",
             num(x["mean_pairwise_jaccard"]), f"{x['mean_sample_vs_class_cosine']:.3f}",
             f"{x['mean_sample_vs_other_classes_cosine']:.3f}"] for x in d["table"]]
    head = (f"{d['model']} on {d['data']}, {d['epochs']} epochs, seed {d['seed']}, validation accuracy "
            f"{pct(d['val_accuracy'])}%. Kernels for 90% of the mass vs depth: Spearman "
            f"{d['trend_kernels_for_90pct']['spearman']:+.1f}; as a fraction of the layer: Spearman "
            f"{d['trend_fraction_for_90pct']['spearman']:+.1f}.")
    return (markdown_table(["layer", "depth", "channels", "kernels for 90% mass, mean (range over classes)",
                            "as fraction of channels", "Gini", "relevant kernels per class", "Jaccard between classes",
                            "cosine: sample vs own class", "vs other classes"], rows)
            + "\n\n" + head + "\n\n" + source("discovery1"))


REGULARIZER_ROWS = [("baseline", "None (baseline)"), ("dropout_0.2", "Dropout 0.2 (before fc)"),
                    ("focused_dropout_par_0.1", "FocusedDropout par 0.1 (after layer3)"),
                    ("input_grad_reg_0.1", "Input-gradient reg. λ = 0.1")]


@table("regularizers")
def regularizers(r: Results) -> str:
    s = r["regularizers"]["summary"]
    rows = [[label, pm(s[key]["train_accuracy"]), pm(s[key]["test_accuracy"]), pm(s[key]["fgsm_0.05"]),
             pm(s[key]["fgsm_0.1"]), f"{s[key]['train_seconds']['mean']:.0f}"] for key, label in REGULARIZER_ROWS]
    return (markdown_table(["method", "train acc", "test acc", "FGSM ε=0.05", "FGSM ε=0.1", "train s/run"], rows)
            + "\n\n" + source("regularizers"))


@table("decompose")
def decompose(r: Results) -> str:
    d = r["analyses"]["summary"]["decompose"]
    per_seed = ", ".join(f"{v:.3f}" for v in d["r_A"]["values"])
    rows = [
        ["k₁ chosen on val (per seed)", ", ".join(f"{v:.0f}" for v in d["k1"]["values"]), "5 (fixed)"],
        ["A_f (full)", pm(d["accuracy_full"]), "91.17"],
        ["A_d (decomposed)", pm(d["accuracy_decomposed"]), "88.59"],
        ["**r_A**", f"**{pm(d['r_A'], 3, 1)}** ({per_seed})", "0.972"],
        ["agreement with the full prediction", pm(d["agreement"], 3, 1), "—"],
        ["**retrained, the paper's protocol** (every parameter, 1 epoch)",
         f"**{pm(d['accuracy_retrained'])}** ({100 * d['retrained_minus_full']['mean']:+.2f} ± "
         f"{100 * d['retrained_minus_full']['std']:.2f} vs A_f)", "91.51 (+0.34)"],
        ["matched control: full network, same retraining", pm(d["accuracy_control"]), "—"],
        ["retrained up to 3 epochs (epoch chosen on val)", pm(d["accuracy_retrained_3_epochs"]), "—"],
        ["matched control, up to 3 epochs", pm(d["accuracy_control_3_epochs"]), "—"],
        ["influential → noise (Table 8)", pm(d["essentiality_influential"]), "48.97"],
        ["random non-influential → noise", pm(d["essentiality_non_influential"]), "82.24"],
        ["final-layer multiply-adds (share of full)", f"{pct(d['multiply_adds_ratio']['mean'])}%", "7.8%"],
        ["top-5 influential ∩ diagnosis top-5 (of 5; chance "
         f"{d['chance_intersection_topk']['mean'] * 5:.2f})",
         f"{pm(d['intersection_vs_diagnosis_topk'], 2, 1)} (Jaccard {pm(d['jaccard_vs_diagnosis_topk'], 2, 1)})", "—"],
    ]
    return (markdown_table(["", "ours (test, %)", "paper, ResNet-20 / CIFAR-10"], rows)
            + f"\n\nModels' test accuracy: {pm(r['analyses']['summary']['test_accuracy'])}.\n\n" + source("analyses"))


@table("detectors")
def detectors(r: Results) -> str:
    s = r["analyses"]["summary"]
    det, j20, st = s["detectors"], s.get("detectors_draws20"), s["stability"]

    def both(fn: Callable[[dict], str], group: dict) -> list[str]:
        return [fn(group["fgsm"]), fn(group["pgd"])]

    rows = [
        ["attack success rate (test, of correctly classified images)",
         *both(lambda g: f"{pm(g['success_rate_test'], 1)}% ({g['adversarials_test']['mean']:.0f} ± "
                         f"{g['adversarials_test']['std']:.0f} adversarials)", det)],
        ["**feature-noise detector, combined** (`auroc_noise_combined`, fit on val)",
         *both(lambda g: f"**{pm(g['auroc_noise_combined'], 3, 1)}**", det)],
        ["… its cross-validated AUROC within val", *both(lambda g: pm(g["combined_auroc_calibration_cv"], 3, 1), det)],
        ["… best single score (`auroc_noise`, chosen on val)", *both(lambda g: pm(g["auroc_noise"], 3, 1), det)],
        ["… flip share only (`auroc_noise_flip`, chosen on val)", *both(lambda g: pm(g["auroc_noise_flip"], 3, 1), det)],
    ]
    if j20:
        rows += [["combined, J = 20 draws (`--draws 20`, sensitivity check)",
                  *both(lambda g: pm(g["auroc_noise_combined"], 3, 1), j20)],
                 ["flip share only, J = 20", *both(lambda g: pm(g["auroc_noise_flip"], 3, 1), j20)]]
    rows += [["**feature squeezing** (peer, `auroc_feature_squeezing`, setting chosen on val)",
              *both(lambda g: f"**{pm(g['auroc_feature_squeezing'], 3, 1)}**", det)],
             ["paper setting: absolute δ ≤ 0.3 at the last conv (Fig. 3)",
              f"AUROC {pm(st['paper_auroc'], 2, 1)}, {pct(st['paper_keep_false_at_best']['mean'], 0)}% keep the "
              "false label", "—"]]
    per_seed = "; ".join(
        f"{attack.upper()}: combined {' / '.join(f'{v:.3f}' for v in det[attack]['auroc_noise_combined']['values'])} "
        f"against squeezing {' / '.join(f'{v:.3f}' for v in det[attack]['auroc_feature_squeezing']['values'])}"
        for attack in ("fgsm", "pgd"))
    return (markdown_table(["", "FGSM", "PGD (10 steps)"], rows) + f"\n\nPer seed {s['seeds']}: {per_seed}.\n\n"
            + source("analyses"))
