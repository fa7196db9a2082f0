import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeldoctor.cli.app import main
from modeldoctor.io.diagnosis_files import load_diagnosis

pytestmark = pytest.mark.slow  # trains a model and scores the 3,500 training images


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("base")
    assert main(["train", "--model", "simple-cnn", "--data", "mnist5k", "--epochs", "1", "--out", str(out), "--json"]) == 0
    yield out / "model.pt"
    torch.set_num_threads(before)


def _run(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_diagnose_explain_lowest_end_to_end(trained, tmp_path, capsys):
    layers = "features.7,features.11"
    out = tmp_path / "diag"
    res = _run(capsys, ["diagnose", "--checkpoint", str(trained), "--layers", layers, "--noise-draws", "2",
                        "--samples-per-class", "6", "--lowest", "3", "--out", str(out)])
    assert res["diagnosis"] == str(out) and res["seconds"] > 0
    assert [layer["name"] for layer in res["layers"]] == ["features.7", "features.11"]
    for layer in res["layers"]:
        assert layer["channels"] in (64, 128) and len(layer["kernels_for_90pct_mass"]) == 10
        assert all(1 <= k <= layer["channels"] for k in layer["kernels_for_90pct_mass"])
    meta = json.loads((out / "diagnosis.json").read_text())
    assert meta["options"]["noise_draws"] == 2 and meta["class_names"] == [str(d) for d in range(10)]
    d = load_diagnosis(str(out))
    assert d.correlation("features.11").shape == (10, 128) and d.layers["features.11"].counts.max() <= 6
    annotate = json.loads((out / "annotate.json").read_text())
    assert set(annotate["per_class"]) == {str(c) for c in range(10)}
    first = annotate["per_class"]["3"]
    assert len(first) == 3 and first[0]["confidence"] <= first[-1]["confidence"] and first[0]["label"] == 3

    sample = first[0]["id"]
    ex = _run(capsys, ["explain", "--checkpoint", str(trained), "--diagnosis", str(out), "--sample", sample,
                       "--out", str(tmp_path / "ex")])
    assert ex["label"] == "3" and 0 < ex["confidence"] <= 1 and ex["runner_up"] != ex["prediction"]
    assert len(ex["kernels_vs_predicted"]) == 5 and ex["layer"] == "features.11"
    assert Image.open(ex["overlay"]).format == "PNG"

    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8) + 30).save(image)
    mask = tmp_path / "mask.png"
    m = np.zeros((28, 28), dtype=np.uint8)
    m[7:21, 7:21] = 255
    Image.fromarray(m).save(mask)
    ex2 = _run(capsys, ["explain", "--checkpoint", str(trained), "--diagnosis", str(out), "--image", str(image),
                        "--mask", str(mask), "--label", "1", "--layer", "features.7", "--out", str(tmp_path / "ex")])
    assert 0 <= ex2["background_share"] <= 1 and ex2["object_area"] == pytest.approx(0.25, abs=0.01)

    assert main(["diagnose", "--checkpoint", str(trained), "--layers", "classifier.nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["diagnose", "--checkpoint", str(trained), "--layers", "fc", "--out", str(tmp_path / "x")]) == 2
