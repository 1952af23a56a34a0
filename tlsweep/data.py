"""Datasets: a job's training, validation and held-out test images in memory, and what the classes say.

Transfer-learning datasets are small (thousands of images), and a sweep trains on the same
images dozens of times, so tlsweep decodes them once per job instead of once per epoch
(``tlsweep.images``), from a folder (``tlsweep.folders``), TFDS or the embedded demo.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlsweep.cache.store import Store
from tlsweep.errors import TlsweepError, first_line
from tlsweep.folders import class_files, folder_layout
from tlsweep.groups import DatasetSpec
from tlsweep.images import decode_all, resize

log = logging.getLogger(__name__)

DIGITS_SOURCE_CLASSES = (0, 1, 2, 3, 4)  # the tiny backbone's pretraining task
DIGITS_TARGET_CLASSES = (5, 6, 7, 8, 9)  # the demo's target task: classes never seen in pretraining


@dataclass
class ImageData:
    """Training and validation images (N, H, W, 3) uint8 with int32 labels, and their class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)
    x_test: np.ndarray | None = None  # held out from the search; evaluated once, on the best model
    y_test: np.ndarray | None = None

    def merged(self) -> ImageData:
        """These images with the validation images moved into training (for a final refit: nothing is
        held out; the validation arrays stay for shape only)."""
        return ImageData(
            np.concatenate([self.x_train, self.x_val]),
            np.concatenate([self.y_train, self.y_val]),
            self.x_val,
            self.y_val,
            self.class_names,
            f"{self.description}, validation images included",
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
            f"{len(self.y_train)} training and {len(self.y_val)} validation images"
        )
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", …" if len(self.skipped) > 3 else "")
            line += f"; skipped {len(self.skipped)} unreadable or oversized image(s): {shown}"
        if self.y_test is not None:
            line += f"; {len(self.y_test)} test images held out"
        return line


FEW_IMAGES = 20  # a class with fewer training images than this is hard to learn and to judge
IMBALANCED = 3.0  # the largest class this many times the smallest: accuracy hides the small classes


def class_report(data: ImageData, objective: str) -> tuple[str, list[str]]:
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


def load_for_job(cfg: DatasetSpec, image_size: int, objective: str, store: Store | None, max_bytes: float) -> ImageData:
    """The job's dataset, with what it is and its class warnings in the job's log."""
    data = load_dataset(cfg, image_size, store, max_bytes)
    log.info(data.summary())
    per_class, warnings = class_report(data, objective)
    log.info(per_class)
    for warning in warnings:
        log.warning(warning)
    return data


def load_dataset(
    cfg: DatasetSpec, image_size: int, store: Store | None = None, max_bytes: float | None = None
) -> ImageData:
    """Load the dataset that ``cfg`` (the ``dataset`` group) names, at ``image_size`` pixels.

    With a ``store``, a folder's decoded images are kept there, so later jobs and sweeps at the same
    size skip decoding. ``max_bytes``: the most the decoded images may take in memory (checked
    before decoding).
    """
    if cfg.name == "folder":
        data = _load_folder(cfg, image_size, store, max_bytes)
    else:
        loaders: dict[str, Callable[[DatasetSpec, int], ImageData]] = {
            "digits": _load_digits_demo,
            "tf_flowers": _load_tfds,
        }
        data = loaders[cfg.name](cfg, image_size)  # the name, fractions and batch size were checked with the config
    _hold_out_test(data, cfg.test_split, cfg.seed)
    return _take_fraction(data, cfg.fraction, cfg.seed)


def load_digits(classes: tuple[int, ...], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 handwritten digits of ``classes`` as RGB uint8 images, labels 0..k-1."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    keep = np.isin(digits.target, classes)
    gray = np.clip(digits.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([resize(Image.fromarray(g), image_size) for g in gray])
    labels = np.searchsorted(np.array(classes), digits.target[keep]).astype(np.int32)
    return images, labels


def _load_digits_demo(cfg: DatasetSpec, image_size: int) -> ImageData:
    x, y = load_digits(DIGITS_TARGET_CLASSES, image_size)
    train, val = stratified_split(y, cfg.validation_split, cfg.seed)
    return ImageData(
        x[train],
        y[train],
        x[val],
        y[val],
        class_names=[str(c) for c in DIGITS_TARGET_CLASSES],
        description="digits 5-9 (scikit-learn, embedded demo)",
    )


def _load_folder(cfg: DatasetSpec, image_size: int, store: Store | None, max_bytes: float | None) -> ImageData:
    layout = folder_layout(cfg)
    workers = cfg.workers
    train_files, not_files = class_files(layout.train)
    split_files = {split: class_files(root) for split, root in layout.splits().items() if split != "train"}
    count = sum(len(ps) for files in [train_files, *(f for f, _ in split_files.values())] for ps in files.values())
    needed = count * image_size * image_size * 3
    if max_bytes is not None and needed > max_bytes:
        raise TlsweepError(
            f"the {count} images of {layout.root} take {needed / 2**30:.1f} GB decoded at {image_size} px, more than "
            f"this job's memory budget allows ({max_bytes / 2**30:.1f} GB, with a copy in the input pipeline); set a "
            "smaller dataset.image_size or "
            "dataset.fraction, or a larger feature_cache.memory_gb on a machine with the memory"
        )
    x, y, skipped = decode_all(train_files, image_size, workers, store)
    class_names = list(train_files)

    def decode_split(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
        """Another split's images, which must have the training split's classes."""
        files, others = split_files[split]
        if list(files) != class_names:
            raise TlsweepError(
                f"the class folders of {layout.train} and {root} differ "
                f"({', '.join(sorted(set(train_files) ^ set(files)))}); give both the same classes"
            )
        images, labels, unreadable = decode_all(files, image_size, workers, store)
        skipped.extend(unreadable)
        not_files.extend(others)
        return images, labels

    if layout.val is None:
        train, val = stratified_split(y, cfg.validation_split, cfg.seed)
        x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    else:
        (x_train, y_train), (x_val, y_val) = (x, y), decode_split("val", layout.val)
    data = ImageData(x_train, y_train, x_val, y_val, class_names, f"folder {layout.root}", skipped)
    if layout.test is not None:
        data.x_test, data.y_test = decode_split("test", layout.test)
    data.skipped += not_files  # pipes, devices, dangling links: never opened
    return data


def _load_tfds(cfg: DatasetSpec, image_size: int) -> ImageData:
    import tensorflow_datasets as tfds

    train_pct = round(100 * (1 - cfg.validation_split))
    try:
        (train, val), info = tfds.load(
            cfg.name,
            split=[f"train[:{train_pct}%]", f"train[{train_pct}%:]"],
            as_supervised=True,
            with_info=True,
            data_dir=cfg.data_dir,
        )
    except Exception as e:  # TFDS raises many kinds of errors for a failed download
        raise TlsweepError(
            f"could not load TFDS dataset '{cfg.name}' ({first_line(e)}); it downloads on first use, "
            "so run once on a machine with internet and copy ~/tensorflow_datasets "
            "(or set dataset.data_dir), or use dataset=folder dataset.path=<your images>"
        ) from e

    def to_arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(resize(Image.fromarray(img), image_size), lbl) for img, lbl in tfds.as_numpy(split)]
        return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int32)

    x_train, y_train = to_arrays(train)
    x_val, y_val = to_arrays(val)
    names = list(info.features["label"].names)
    return ImageData(x_train, y_train, x_val, y_val, names, f"TFDS {cfg.name}")


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


def _hold_out_test(data: ImageData, test_split: float, seed: int) -> None:
    """Move ``test_split`` of each class's training images to the test set (unless a test folder gave one)."""
    if data.y_test is not None or test_split <= 0:
        return
    train, test = stratified_split(data.y_train, test_split, seed + 1)  # independent of the validation split
    data.x_test, data.y_test = data.x_train[test], data.y_train[test]
    data.x_train, data.y_train = data.x_train[train], data.y_train[train]


def _take_fraction(data: ImageData, fraction: float, seed: int) -> ImageData:
    if fraction >= 1.0:
        return data
    keep, _ = stratified_split(data.y_train, 1.0 - fraction, seed)
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    data.description += f", {fraction:g} of the training images"
    return data
