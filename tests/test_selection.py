"""doctor/selection.py: which samples the diagnosis averages over (T most confident) and which to annotate."""

from __future__ import annotations

import torch

from modeldoctor.doctor.selection import SampleScores, least_confident, most_confident


def scores() -> SampleScores:
    #               rows:   0    1    2    3    4    5
    label = torch.tensor([0, 0, 0, 1, 1, 1])
    predicted = torch.tensor([0, 0, 1, 1, 1, 0])
    confidence = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.95, 0.55])
    label_confidence = torch.tensor([0.9, 0.6, 0.1, 0.7, 0.95, 0.3])
    return SampleScores(torch.arange(6), torch.arange(6) + 10, label, predicted, confidence, label_confidence,
                        num_classes=2)


def test_most_confident_correct_per_predicted_class_by_hand() -> None:
    chosen = most_confident(scores(), per_class=2)
    assert chosen[0].tolist() == [0, 1] and chosen[1].tolist() == [4, 3]  # wrong rows 2 and 5 excluded
    assert most_confident(scores(), 1, min_confidence=0.92)[0].tolist() == []
    wrong_too = most_confident(scores(), 1, require_correct=False)
    assert wrong_too[1].tolist() == [4] and wrong_too[0].tolist() == [0]
    by_label = most_confident(scores(), 3, target="label", require_correct=False)
    assert by_label[0].tolist() == [0, 1, 2]  # ranked by the true class's probability


def test_least_confident_is_the_annotate_document() -> None:
    doc = least_confident(scores(), 2, ["zero", "one"], [f"id{i}" for i in range(6)])
    assert [e["id"] for e in doc["per_class"]["zero"]] == ["id2", "id1"]  # lowest true-label probability first
    assert [e["id"] for e in doc["per_class"]["one"]] == ["id5", "id3"]
    assert doc["per_class"]["zero"][0] == {"id": "id2", "confidence": doc["per_class"]["zero"][0]["confidence"],
                                           "label": 0, "predicted": 1}
