"""Image datasets: a folder of class sub-folders, TFDS, or the embedded demo's digits, decoded once per job.

Decoding is the costly part (``decode``): with a store, a folder's decoded images are kept for later
jobs and sweeps at the same size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlsweep.cache.store import Store
from tlsweep.data import Data, finish, stratified_split
from tlsweep.errors import TlsweepError, first_line
from tlsweep.folders import class_files, folder_layout
from tlsweep.groups import DatasetSpec
from tlsweep.tasks.images.decode import IMAGE_EXTENSIONS, decode_all, resize

DIGITS_SOURCE_CLASSES = (0, 1, 2, 3, 4)  # the tiny backbone's pretraining task
DIGITS_TARGET_CLASSES = (5, 6, 7, 8, 9)  # the demo's target task: classes never seen in pretraining


def load_images(
    cfg: DatasetSpec, image_size: int, store: Store | None = None, max_bytes: float | None = None
) -> Data:
    """Load the dataset that ``cfg`` (the ``dataset`` group) names, at ``image_size`` pixels.

    With a ``store``, a folder's decoded images are kept there, so later jobs and sweeps at the same
    size skip decoding. ``max_bytes``: the most the decoded images may take in memory (checked
    before decoding).
    """
    if cfg.name == "folder":
        data = _load_folder(cfg, image_size, store, max_bytes)
    else:
        loaders: dict[str, Callable[[DatasetSpec, int], Data]] = {
            "digits": _load_digits_demo,
            "tf_flowers": _load_tfds,
        }
        data = loaders[cfg.name](cfg, image_size)  # the name and fractions were checked with the config
    return finish(data, cfg)


def load_digits(classes: tuple[int, ...], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 handwritten digits of ``classes`` as RGB uint8 images, labels 0..k-1."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    keep = np.isin(digits.target, classes)
    gray = np.clip(digits.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([resize(Image.fromarray(g), image_size) for g in gray])
    labels = np.searchsorted(np.array(classes), digits.target[keep]).astype(np.int32)
    return images, labels


def _load_digits_demo(cfg: DatasetSpec, image_size: int) -> Data:
    x, y = load_digits(DIGITS_TARGET_CLASSES, image_size)
    train, val = stratified_split(y, cfg.validation_split, cfg.seed)
    return Data(
        x[train],
        y[train],
        x[val],
        y[val],
        class_names=[str(c) for c in DIGITS_TARGET_CLASSES],
        description="digits 5-9 (scikit-learn, embedded demo)",
    )


def _load_folder(cfg: DatasetSpec, image_size: int, store: Store | None, max_bytes: float | None) -> Data:
    layout = folder_layout(cfg)
    workers = cfg.workers
    train_files, not_files = class_files(layout.train, IMAGE_EXTENSIONS)
    others = {split: root for split, root in layout.splits().items() if split != "train"}
    split_files = {split: class_files(root, IMAGE_EXTENSIONS) for split, root in others.items()}
    count = sum(len(ps) for files in [train_files, *(f for f, _ in split_files.values())] for ps in files.values())
    needed = count * image_size * image_size * 3
    if max_bytes is not None and needed > max_bytes:
        raise TlsweepError(
            f"the {count} images of {layout.root} take {needed / 2**30:.1f} GB decoded at {image_size} px, more than "
            f"this job's memory budget allows ({max_bytes / 2**30:.1f} GB, with a copy in the input pipeline); set a "
            "smaller dataset.image_size, or a larger feature_cache.memory_gb on a machine with the memory "
            "(every image is decoded before dataset.fraction picks some)"
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
    data = Data(x_train, y_train, x_val, y_val, class_names, f"folder {layout.root}", skipped)
    if layout.test is not None:
        data.x_test, data.y_test = decode_split("test", layout.test)
    data.skipped += not_files  # pipes, devices, dangling links: never opened
    return data


def _load_tfds(cfg: DatasetSpec, image_size: int) -> Data:
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
    return Data(x_train, y_train, x_val, y_val, names, f"TFDS {cfg.name}")


