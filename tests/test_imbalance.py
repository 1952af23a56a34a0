"""Imbalanced classes: the balanced scores, class weights in training, and what the job and report say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_spec, write_image

from tlsweep.data import class_weights
from tlsweep.errors import TlsweepError

COUNTS = {"common": 60, "middling": 15, "rare": 5}


def faint_folder(root: Path, counts: dict[str, int], val_per_class: int = 10, seed: int = 0) -> Path:
    """Noisy images whose class shows only as a faint stripe: a model leans on the class sizes."""
    rng = np.random.default_rng(seed)
    for split, sizes in (("train", counts), ("val", dict.fromkeys(counts, val_per_class))):
        for label, (name, n) in enumerate(sizes.items()):
            for i in range(n):
                image = rng.integers(0, 200, (32, 32, 3)).astype(np.uint8)
                image[:, label * 10 : label * 10 + 10] //= 2  # a darker band, under the noise
                write_image(root / split / name / f"{i}.png", image)
    return root


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # class 3, on purpose
def test_balanced_accuracy_and_macro_f1_match_scikit_learn() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from tlsweep.model import BalancedAccuracy, MacroF1

    rng = np.random.default_rng(0)
    labels = rng.choice(4, 200, p=[0.7, 0.2, 0.1, 0.0])  # class 3 never occurs
    probabilities = rng.dirichlet(np.ones(4), 200).astype("float32")
    probabilities[labels == 0, 0] += 0.5  # the common class is mostly right, the others mostly not
    predicted = probabilities.argmax(1)
    for metric, expected in (
        (BalancedAccuracy(4), balanced_accuracy_score(labels, predicted)),
        (MacroF1(4), f1_score(labels, predicted, average="macro")),
    ):
        for start in range(0, 200, 64):  # in batches, as evaluate feeds it
            metric.update_state(labels[start : start + 64], probabilities[start : start + 64])
        assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    assert float(BalancedAccuracy(4).result()) == 0.0  # nothing seen yet: no NaN


def test_class_weights_balance_the_classes_or_follow_a_mapping() -> None:
    labels = np.array([0] * 60 + [1] * 15 + [2] * 5)
    weights = class_weights("balanced", labels, list(COUNTS))
    assert weights == pytest.approx({0: 80 / 180, 1: 80 / 45, 2: 80 / 15})
    assert sum(weights[c] * n for c, n in enumerate((60, 15, 5))) == pytest.approx(80)  # each class weighs 80/3
    assert class_weights({"rare": 4}, labels, list(COUNTS)) == {0: 1.0, 1: 1.0, 2: 4.0}
    with pytest.raises(TlsweepError, match="class_weight names class 'rose', which the dataset does not have"):
        class_weights({"rose": 2}, labels, list(COUNTS))
    for bad in ("class_weight=heavy", "class_weight={rare:-1}"):
        with pytest.raises(TlsweepError, match="class_weight"):
            make_spec([bad])


def test_balanced_class_weights_raise_the_rare_class_recall(tmp_path: Path, caplog) -> None:
    from tlsweep.job import run_job

    images = faint_folder(tmp_path / "images", COUNTS)
    pinned = ["search.params.finetune.learning_rate=3e-3", "search.params.finetune.optimizer=adam"]
    base = ["dataset=folder", f"dataset.path={images}", *FAST, "tuner.max_trials=1", *pinned]
    base += ["finetune=none", "finetune.head_epochs=8"]
    recall = {}
    for weighting in ("null", "balanced"):
        with caplog.at_level("INFO"):
            run_job(make_spec([*base, f"class_weight={weighting}"]), tmp_path / weighting, {})
        (trial,) = [json.loads(p.read_text()) for p in (tmp_path / weighting / "trials").glob("*.json")]
        recall[weighting] = trial["val_recall"]
        entry = trial["history"][trial["best_epoch"] - 1]
        assert 0 <= entry["val_balanced_accuracy"] <= 1 and 0 <= entry["val_macro_f1"] <= 1
    assert recall["balanced"][2] > recall["null"][2], recall  # the rare class is found more often
    assert "images per class (training): common 60, middling 15, rare 5" in caplog.text
    assert "class 'rare' has only 5 training image(s)" in caplog.text
    assert "the classes are imbalanced (60 to 5 training images) and the objective is val_accuracy" in caplog.text

    from tlsweep.report import build_report

    report = build_report(tmp_path / "balanced")["md"].read_text()
    assert "## Classes: recall of the best trials" in report and "| trial | common | middling | rare |" in report
    assert "classes are imbalanced (60 to 5 training images)" in report
