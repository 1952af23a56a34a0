"""Datasets: decode every image once, resize it to the backbone's size and keep it as uint8.

Transfer-learning datasets are small (thousands of images), and a sweep trains on the same
images dozens of times, so tlsweep decodes them once per job instead of once per epoch.
Unreadable images are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageOps

from tlsweep.cache.store import Store
from tlsweep.errors import TlsweepError, first_line

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_PIXELS = 50_000_000  # images larger than this (about 7,000 × 7,000) are skipped: decoded, one takes 150 MB
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


def load_dataset(
    cfg: DictConfig, image_size: int, store: Store | None = None, max_bytes: float | None = None
) -> ImageData:
    """Load the dataset that ``cfg`` (the ``dataset`` group) names, at ``image_size`` pixels.

    With a ``store``, a folder's decoded images are kept there, so later jobs and sweeps at the same
    size skip decoding. ``max_bytes``: the most the decoded images may take in memory (checked
    before decoding).
    """
    if cfg.name == "folder":
        data = _load_folder(cfg, image_size, store, max_bytes)
    else:
        loaders: dict[str, Callable[[DictConfig, int], ImageData]] = {
            "digits": _load_digits_demo,
            "tf_flowers": _load_tfds,
        }
        data = loaders[cfg.name](cfg, image_size)  # the name, fractions and batch size were checked with the config
    _hold_out_test(data, float(cfg.get("test_split", 0.0)), cfg.seed)
    return _take_fraction(data, cfg.fraction, cfg.seed)


def load_digits(classes: tuple[int, ...], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 handwritten digits of ``classes`` as RGB uint8 images, labels 0..k-1."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    keep = np.isin(digits.target, classes)
    gray = np.clip(digits.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([_resize(Image.fromarray(g), image_size) for g in gray])
    labels = np.searchsorted(np.array(classes), digits.target[keep]).astype(np.int32)
    return images, labels


def _load_digits_demo(cfg: DictConfig, image_size: int) -> ImageData:
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


@dataclass
class FolderLayout:
    """Where a folder dataset's splits are: ``train`` always; ``val`` and ``test`` when given."""

    root: Path
    train: Path
    val: Path | None
    test: Path | None

    def splits(self) -> dict[str, Path]:
        found = {"train": self.train, "val": self.val, "test": self.test}
        return {name: path for name, path in found.items() if path is not None}


def folder_layout(cfg: DictConfig) -> FolderLayout:
    """The splits of ``dataset.path`` (and ``dataset.test``), or a TlsweepError saying what is wrong."""
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise TlsweepError(f"dataset.path {root} does not exist; point dataset.path at a folder of class sub-folders")
    if not root.is_dir():
        raise TlsweepError(f"dataset.path {root} is a file, not a folder; point it at a folder of class sub-folders")
    train_root = root / "train" if (root / "train").is_dir() else root
    if train_root == root and (root / "test").is_dir():
        raise TlsweepError(
            f"{root} has a test/ folder but no train/ folder; put the training images in {root / 'train'}"
        )
    val_root = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if train_root == root:
        val_root = None
    test_root = Path(cfg.test).expanduser() if cfg.get("test") else root / "test"
    if cfg.get("test") and not test_root.is_dir():
        raise TlsweepError(f"dataset.test {test_root} is not a folder; point it at a folder of class sub-folders")
    test = test_root if test_root.is_dir() else None
    if test is not None:
        seen = {p.resolve(): name for name, p in (("training", train_root), ("validation", val_root)) if p}
        inside = next((name for folder, name in seen.items() if _within(test.resolve(), folder)), None)
        if inside or _within(train_root.resolve(), test.resolve()):
            raise TlsweepError(
                f"dataset.test {test} is (or holds) the {inside or 'training'} images; a test set must be images "
                "the search never sees: point dataset.test at a separate folder, or use dataset.test_split"
            )
    return FolderLayout(root, train_root, val_root, test)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What the dataset is, cheaply (no image is decoded): for a folder, the classes of each split and,
    per class, how many files and a hash of their names, sizes and modification times.

    A job records it, and refuses to resume on data that changed (``changes`` says how).
    """
    if cfg.name != "folder":
        return {"source": str(cfg.name)}
    layout = folder_layout(cfg)
    splits = {}
    for split, root in layout.splits().items():
        splits[split] = {name: _files_digest(root / name, paths) for name, paths in _class_files(root)[0].items()}
    return {"source": "folder", "classes": list(splits["train"]), "splits": splits}


def _files_digest(folder: Path, paths: list[Path]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        name = str(path.relative_to(folder)).encode("utf-8", "surrogateescape")
        digest.update(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"files": len(paths), "sha256": digest.hexdigest()[:16]}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the dataset ``new`` differs from ``old`` (two fingerprints), in words; empty if it does not."""
    if old.get("source") != new.get("source"):
        return [f"the dataset is now {new.get('source')} (it was {old.get('source')})"]
    found = []
    old_classes, new_classes = old.get("classes", []), new.get("classes", [])
    found += [f"class '{c}' added" for c in new_classes if c not in old_classes]
    found += [f"class '{c}' removed" for c in old_classes if c not in new_classes]
    for split in sorted({*old.get("splits", {}), *new.get("splits", {})}):
        before, after = old.get("splits", {}).get(split), new.get("splits", {}).get(split)
        if before is None or after is None:
            found.append(f"a {split} split {'appeared' if before is None else 'is gone'}")
            continue
        for name in [c for c in after if c in before]:
            count = after[name]["files"] - before[name]["files"]
            if count:
                found.append(f"{split}/{name}: {abs(count)} image(s) {'added' if count > 0 else 'removed'}")
            elif after[name]["sha256"] != before[name]["sha256"]:
                found.append(f"{split}/{name}: images replaced or modified")
    return found


def _load_folder(cfg: DictConfig, image_size: int, store: Store | None, max_bytes: float | None) -> ImageData:
    layout = folder_layout(cfg)
    workers = int(cfg.get("workers", 4))
    train_files, not_files = _class_files(layout.train)
    split_files = {split: _class_files(root) for split, root in layout.splits().items() if split != "train"}
    count = sum(len(ps) for files in [train_files, *(f for f, _ in split_files.values())] for ps in files.values())
    needed = count * image_size * image_size * 3
    if max_bytes is not None and needed > max_bytes:
        raise TlsweepError(
            f"the {count} images of {layout.root} take {needed / 2**30:.1f} GB decoded at {image_size} px, more than "
            f"this job's memory budget allows ({max_bytes / 2**30:.1f} GB, with a copy in the input pipeline); set a "
            "smaller dataset.image_size or "
            "dataset.fraction, or a larger feature_cache.memory_gb on a machine with the memory"
        )
    x, y, skipped = _decode_all(train_files, image_size, workers, store)
    class_names = list(train_files)

    def decode_split(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
        """Another split's images, which must have the training split's classes."""
        files, others = split_files[split]
        if list(files) != class_names:
            raise TlsweepError(
                f"the class folders of {layout.train} and {root} differ "
                f"({', '.join(sorted(set(train_files) ^ set(files)))}); give both the same classes"
            )
        images, labels, unreadable = _decode_all(files, image_size, workers, store)
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


def _load_tfds(cfg: DictConfig, image_size: int) -> ImageData:
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
        pairs = [(_resize(Image.fromarray(img), image_size), lbl) for img, lbl in tfds.as_numpy(split)]
        return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int32)

    x_train, y_train = to_arrays(train)
    x_val, y_val = to_arrays(val)
    names = list(info.features["label"].names)
    return ImageData(x_train, y_train, x_val, y_val, names, f"TFDS {cfg.name}")


def _class_files(root: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Map each class folder under ``root`` (sorted by name) to its image files; also the entries
    skipped for not being files."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise TlsweepError(
            f"{root} has no class sub-folders; put each class's images in a folder named after the class"
        )
    if len(classes) < 2:
        raise TlsweepError(f"{root} has only one class folder ('{classes[0]}'); a classifier needs at least two")
    unwritable = next((c for c in classes if "\n" in c or "\r" in c or c != c.strip()), None)
    if unwritable is not None:
        raise TlsweepError(
            f"class folder {unwritable!r} in {root} has a line break or leading/trailing spaces in its name, "
            "which labels.txt (one class per line) cannot hold; rename the folder"
        )
    listed = {name: _image_files(root / name) for name in classes}
    files = {name: found for name, (found, _) in listed.items()}
    for name, paths in files.items():
        if not paths:
            raise TlsweepError(
                f"class folder '{name}' in {root} has no images ({'/'.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    return files, [path for _, others in listed.values() for path in others]


def _image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files in ``folder`` and below, sorted, and the entries with an image's name that are
    not regular files (a pipe, a device, a dangling link): those are never opened, as reading a pipe
    would wait forever."""
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinked folders are not followed: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for path in (Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)):
            (found if path.is_file() else others).append(path)  # is_file follows links to files
    return found, [str(p) for p in others]


def _decode_all(
    files: dict[str, list[Path]], image_size: int, workers: int, store: Store | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of ``files`` decoded, with its class index; the unreadable ones skipped and named.

    With a ``store``, the decoded images are kept there under a key of the files' paths, sizes and
    modification times and the image size: the next job at this size loads them instead.
    """
    paths = [p for ps in files.values() for p in ps]
    labels = np.array([i for i, ps in enumerate(files.values()) for _ in ps], dtype=np.int32)
    fields = {"kind": "decoded images", "size": image_size, "decoder": DECODER, "files": _files_key(paths)}
    stored = store.load(fields, in_memory=True) if store is not None else None
    if stored is not None:
        store.reused += 1
        x, ok = stored[0], stored[1].astype(bool)
        log.info("%d images at %d px decoded by an earlier job (%s)", len(paths), image_size, store.root)
    else:
        x, good_rows = _decode(paths, image_size, workers)
        ok = good_rows.astype(bool)
        if store is not None:
            about = f"{len(paths)} decoded images at {image_size} px from {paths[0].parent.parent}"
            with store.write(fields, [x.shape, ok.shape], about, ["uint8", "uint8"]) as (images, good):
                images.append(x)
                good.append(good_rows)
    skipped = [str(p) for p, good in zip(paths, ok, strict=True) if not good]
    for label, name in enumerate(files):
        if not ok[labels == label].any():
            raise TlsweepError(f"no image of class '{name}' could be read; check the files in its folder")
    return (x if ok.all() else x[ok]), labels[ok], skipped


DECODER = 1  # bump when decode_image's output changes: decoded images stored earlier are then decoded again
PROCESSES_FROM = 2000  # images: fewer decode in threads, as starting processes would cost more than it saves


def _files_key(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _decode(paths: list[Path], image_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The images decoded into one uint8 array (unreadable ones left black), and which were read.

    Decoding is CPU work in Python: large sets decode in one process per core (threads share one
    interpreter and barely scale), small ones in threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = cores > 1 and len(paths) >= PROCESSES_FROM
    how = f"{cores} processes" if processes else f"{max(1, workers)} threads"
    log.info("decoding %d images at %d px in %s …", len(paths), image_size, how)
    started = time.monotonic()
    x = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
    ok = np.zeros(len(paths), np.uint8)
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    if processes:
        context = multiprocessing.get_context("spawn")  # TensorFlow's threads make fork unsafe
        pool: Any = ProcessPoolExecutor(cores, mp_context=context)
    else:
        pool = ThreadPoolExecutor(max(1, workers))
    with pool:
        row = 0
        for images, good in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)):
            x[row : row + len(images)], ok[row : row + len(images)] = images, good
            row += len(images)
    seconds = time.monotonic() - started
    log.info("decoded in %.1fs (%.0f images/s)", seconds, len(paths) / max(seconds, 1e-9))
    return x, ok


def _decode_chunk(paths: list[Path], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    decoded = [decode_image(p, image_size) for p in paths]
    blank = np.zeros((image_size, image_size, 3), np.uint8)
    images = np.stack([blank if im is None else im for im in decoded])
    return images, np.array([im is not None for im in decoded], np.uint8)


def decode_image(path: Path, image_size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """Decode one image to RGB uint8 at ``image_size``, upright as viewers show it (EXIF orientation);
    None if it cannot be read or has more than ``max_pixels`` pixels (it would take gigabytes decoded)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:  # read from the header: nothing decoded yet
                return None
            im.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced size, much faster
            im = ImageOps.exif_transpose(im)  # a phone photo stored sideways, turned as it was taken
            if im.mode.startswith("I"):  # 16/32-bit integer images: scale to 8 bits, don't clip
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8))
            return _resize(im, image_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _resize(im: Image.Image, image_size: int) -> np.ndarray:
    rgb = im.convert("RGB")  # grayscale, palette, RGBA and CMYK all become RGB
    return np.asarray(rgb.resize((image_size, image_size), Image.BILINEAR), dtype=np.uint8)


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
