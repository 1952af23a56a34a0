"""A job's examples in memory — training, validation and held-out test — and what their classes say.

Transfer-learning datasets are small (thousands of examples), and a sweep trains on the same ones
dozens of times, so each task (``tlsweep.tasks``) reads them once per job into ``Data``: images
decoded, texts read. What follows is the same for every task: the splits, the fraction, the class
weights and the warnings about small or imbalanced classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlsweep.errors import TlsweepError
from tlsweep.groups import DatasetSpec

log = logging.getLogger(__name__)

@dataclass
class Data:
    """Training and validation examples with int32 labels, and their class names: images (N, H, W, 3) uint8,
    texts (N,) of strings; ``kind`` names them in messages."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)
    x_test: np.ndarray | None = None  # held out from the search; evaluated once, on the best model
    y_test: np.ndarray | None = None
    kind: str = "images"

    def merged(self) -> Data:
        """These images with the validation images moved into training (for a final refit: nothing is
        held out; the validation arrays stay for shape only)."""
        return Data(
            np.concatenate([self.x_train, self.x_val]),
            np.concatenate([self.y_train, self.y_val]),
            self.x_val,
            self.y_val,
            self.class_names,
            f"{self.description}, validation {self.kind} included",
            kind=self.kind,
        )

    def facts(self) -> dict[str, Any]:
        """What every run records about the data: its classes and how many images each split holds."""
        counts = np.bincount(self.y_train, minlength=len(self.class_names))
        return {
            "classes": list(self.class_names),
            "train_images": int(len(self.y_train)),
            "val_images": int(len(self.y_val)),
            "test_images": 0 if self.y_test is None else int(len(self.y_test)),
            "class_counts": [int(n) for n in counts],
        }

    def summary(self) -> str:
        """One line saying what was loaded, for the job log."""
        line = (
            f"dataset {self.description}: {len(self.class_names)} classes, "
            f"{len(self.y_train)} training and {len(self.y_val)} validation {self.kind}"
        )
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", …" if len(self.skipped) > 3 else "")
            why = "unreadable or oversized" if self.kind == "images" else "unreadable, empty or oversized"
            line += f"; skipped {len(self.skipped)} {why} {self.kind[:-1]}(s): {shown}"
        if self.y_test is not None:
            line += f"; {len(self.y_test)} test {self.kind} held out"
        return line


FEW_IMAGES = 20  # a class with fewer training images than this is hard to learn and to judge
IMBALANCED = 3.0  # the largest class this many times the smallest: accuracy hides the small classes


def class_report(data: Data, objective: str) -> tuple[str, list[str]]:
    """The training images per class (a line for the job log), and warnings: classes too small to learn or
    judge, and an imbalance that plain accuracy would hide."""
    counts = np.bincount(data.y_train, minlength=len(data.class_names))
    pairs = list(zip(data.class_names, counts.tolist(), strict=True))
    line = "images per class (training): " + ", ".join(f"{c} {n}" for c, n in pairs)
    warnings = [
        f"class '{c}' has only {n} training image(s); fewer than {FEW_IMAGES} are hard to learn and to judge"
        for c, n in pairs
        if n < FEW_IMAGES
    ]
    imbalance = imbalance_warning(counts.tolist(), objective)
    return line, warnings + ([imbalance] if imbalance else [])


def imbalance_warning(counts: list[int], objective: str) -> str | None:
    """A warning when the training images per class (``counts``) are imbalanced and the objective is plain
    accuracy, which the large classes dominate."""
    if not counts or min(counts) <= 0 or max(counts) / min(counts) < IMBALANCED:
        return None
    if objective not in ("val_accuracy", "accuracy"):
        return None
    return (
        f"the classes are imbalanced ({max(counts)} to {min(counts)} training images) and the objective is "
        f"{objective}, which the large classes dominate: consider tuner.objective=val_balanced_accuracy "
        "(or val_macro_f1) and class_weight=balanced"
    )


def class_weights(setting: Any, labels: np.ndarray, class_names: list[str]) -> dict[int, float] | None:
    """Each class's weight in the training loss, by index: ``balanced`` gives a class n / (k · its count),
    so every class weighs the same in total; a mapping names the classes it weighs (the rest weigh 1)."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(labels, minlength=len(class_names))
        return {i: float(len(labels) / (len(class_names) * n)) for i, n in enumerate(counts) if n}
    unknown = [str(k) for k in setting if str(k) not in class_names]
    if unknown:
        raise TlsweepError(
            f"class_weight names class '{unknown[0]}', which the dataset does not have (its classes: "
            f"{', '.join(class_names)})"
        )
    given = {str(k): float(v) for k, v in setting.items()}
    return {i: given.get(name, 1.0) for i, name in enumerate(class_names)}


def log_facts(data: Data, objective: str) -> Data:
    """Say in the job's log what was loaded, the examples per class, and the class warnings."""
    log.info(data.summary())
    per_class, warnings = class_report(data, objective)
    log.info(per_class)
    for warning in warnings:
        log.warning(warning)
    return data


def finish(data: Data, cfg: DatasetSpec) -> Data:
    """A task's loaded examples with the test split held out and the fraction of training examples taken."""
    _hold_out_test(data, cfg.test_split, cfg.seed)
    return _take_fraction(data, cfg.fraction, cfg.seed)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) holding out ``fraction`` of each class, the same for the same seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(len(idx) * fraction)), len(idx) - 1) if len(idx) > 1 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.sort(train), np.sort(val)


def _hold_out_test(data: Data, test_split: float, seed: int) -> None:
    """Move ``test_split`` of each class's training examples to the test set (unless a test folder gave one)."""
    if data.y_test is not None or test_split <= 0:
        return
    train, test = stratified_split(data.y_train, test_split, seed + 1)  # independent of the validation split
    data.x_test, data.y_test = data.x_train[test], data.y_train[test]
    data.x_train, data.y_train = data.x_train[train], data.y_train[train]


def _take_fraction(data: Data, fraction: float, seed: int) -> Data:
    if fraction >= 1.0:
        return data
    keep, _ = stratified_split(data.y_train, 1.0 - fraction, seed)
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    data.description += f", {fraction:g} of the training {data.kind}"
    return data
