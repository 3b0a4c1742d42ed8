"""ConfusionMatrix against brute-force per-pixel counting and a hand-worked example."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.errors import DataError
from fcnquant.metrics import ConfusionMatrix


def brute_force(preds, labels, n=21, ignore=255):
    """Per-class intersection and union by looping over every pixel."""
    inter, union = [0] * n, [0] * n
    correct = total = 0
    for pred, label in zip(preds, labels):
        for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
            if t == ignore:
                continue
            total += 1
            if p == t:
                inter[t] += 1
                union[t] += 1
                correct += 1
            else:
                union[t] += 1
                union[p] += 1
    return inter, union, correct, total


def test_matches_brute_force_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    present = [0, 1, 2, 5, 9, 15]  # label classes; 3 is predicted but never labelled; the rest are absent
    preds, labels = [], []
    for shape in [(2, 7, 9), (1, 5, 4), (3, 6, 6)]:
        label = rng.choice(present, size=shape).astype(np.uint8)
        label[rng.random(shape) < 0.2] = 255
        pred = rng.choice(present + [3], size=shape)
        preds.append(pred)
        labels.append(label)
    cm = ConfusionMatrix(21)
    for p, t in zip(preds, labels):
        cm.update(p, t)
    inter, union, correct, total = brute_force(preds, labels)
    iou_ref = [i / u if u else math.nan for i, u in zip(inter, union)]
    got = cm.iou()
    for c in range(21):
        if math.isnan(iou_ref[c]):
            assert math.isnan(got[c])
        else:
            assert got[c] == pytest.approx(iou_ref[c], rel=1e-12)
    scored = [v for v in iou_ref if not math.isnan(v)]
    assert len(scored) == 7  # six labelled classes + class 3, predicted only
    assert iou_ref[3] == 0.0
    assert cm.miou() == pytest.approx(100 * sum(scored) / len(scored), rel=1e-12)
    assert cm.miou_awesome() == pytest.approx(100 * sum(scored) / 21, rel=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(correct / total, rel=1e-12)
    assert cm.matrix.sum() == total


def test_merge_equals_single_accumulation():
    rng = np.random.default_rng(1)
    a, b = ConfusionMatrix(), ConfusionMatrix()
    whole = ConfusionMatrix()
    for k in range(4):
        pred = rng.integers(0, 21, (5, 5))
        label = rng.integers(0, 21, (5, 5))
        (a if k % 2 else b).update(pred, label)
        whole.update(pred, label)
    np.testing.assert_array_equal(a.merge(b).matrix, whole.matrix)


def test_hand_worked_example():
    # labels: 0 0 1 / 1 255 2 ; preds: 0 1 1 / 1 0 0 (num_classes 3)
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1, 1], [1, 0, 0]]), np.array([[0, 0, 1], [1, 255, 2]]))
    # class 0: TP 1, FP 1 (the 2 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 0/1
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(100 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    np.testing.assert_allclose(cm.class_accuracy(), [0.5, 1.0, 0.0])


def test_empty_and_errors():
    cm = ConfusionMatrix()
    assert math.isnan(cm.miou())
    assert cm.miou_awesome() == 0.0
    assert math.isnan(cm.pixel_accuracy())
    with pytest.raises(DataError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(DataError, match="predicted"):
        cm.update(np.full((2, 2), 21), np.zeros((2, 2)))
    with pytest.raises(DataError, match="label"):
        cm.update(np.zeros((2, 2)), np.full((2, 2), 30))
