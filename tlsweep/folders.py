"""Folder datasets of any task: where a folder's splits and classes are, and a cheap fingerprint of what they hold.

A folder holds one sub-folder per class (or ``train/``, ``val/`` and ``test/`` that each do), and the
class folders hold the examples: image files for images, ``.txt`` files for texts. A job records
the fingerprint and refuses to resume on data that changed (``changes`` says how), so trials
trained on different data are never ranked together.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsweep.errors import TlsweepError
from tlsweep.groups import DatasetSpec


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


def folder_layout(cfg: DatasetSpec, noun: str = "images") -> FolderLayout:
    """The splits of ``dataset.path`` (and ``dataset.test``), or a TlsweepError saying what is wrong (``noun``:
    what the folder holds)."""
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise TlsweepError(f"dataset.path {root} does not exist; point dataset.path at a folder of class sub-folders")
    if not root.is_dir():
        raise TlsweepError(f"dataset.path {root} is a file, not a folder; point it at a folder of class sub-folders")
    train_root = root / "train" if (root / "train").is_dir() else root
    if train_root == root and (root / "test").is_dir():
        raise TlsweepError(
            f"{root} has a test/ folder but no train/ folder; put the training {noun} in {root / 'train'}"
        )
    val_root = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if train_root == root:
        val_root = None
    test_root = Path(cfg.test).expanduser() if cfg.test else root / "test"
    if cfg.test and not test_root.is_dir():
        raise TlsweepError(f"dataset.test {test_root} is not a folder; point it at a folder of class sub-folders")
    test = test_root if test_root.is_dir() else None
    if test is not None:
        seen = {p.resolve(): name for name, p in (("training", train_root), ("validation", val_root)) if p}
        inside = next((name for folder, name in seen.items() if _within(test.resolve(), folder)), None)
        if inside or _within(train_root.resolve(), test.resolve()):
            raise TlsweepError(
                f"dataset.test {test} is (or holds) the {inside or 'training'} {noun}; a test set must be {noun} "
                "the search never sees: point dataset.test at a separate folder, or use dataset.test_split"
            )
    return FolderLayout(root, train_root, val_root, test)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def fingerprint(cfg: DatasetSpec, extensions: tuple[str, ...]) -> dict[str, Any]:
    """What a folder dataset is, cheaply (no file is read): the classes of each split and, per class, how many
    files (of ``extensions``) and a hash of their names, sizes and modification times.

    A job records it, and refuses to resume on data that changed (``changes`` says how).
    """
    layout = folder_layout(cfg)
    splits = {}
    for split, root in layout.splits().items():
        found = class_files(root, extensions)[0].items()
        splits[split] = {name: _files_digest(root / name, paths) for name, paths in found}
    return {"source": str(cfg.name), "classes": list(splits["train"]), "splits": splits}


def file_digest(path: Path) -> dict[str, Any]:
    """What one file dataset is, cheaply: its size and modification time (a table of texts)."""
    stat = Path(path).stat()
    return {"source": str(path), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


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
                found.append(f"{split}/{name}: {abs(count)} file(s) {'added' if count > 0 else 'removed'}")
            elif after[name]["sha256"] != before[name]["sha256"]:
                found.append(f"{split}/{name}: files replaced or modified")
    if old.get("bytes") != new.get("bytes") or old.get("modified_ns") != new.get("modified_ns"):
        found.append(f"{new.get('source')} was modified")
    return found


def _ours(folder: Path) -> bool:
    """tlsweep's own output folder, when a run starts inside the image folder (``dataset.path=.``): not a class."""
    return folder.name == "outputs" and any((folder / name).is_dir() for name in ("runs", "sweeps", ".cache"))


def class_files(root: Path, extensions: tuple[str, ...]) -> tuple[dict[str, list[Path]], list[str]]:
    """Map each class folder under ``root`` (sorted by name) to its files of ``extensions``; also the entries
    skipped for not being files."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not _ours(d))
    if not classes:
        raise TlsweepError(
            f"{root} has no class sub-folders; put each class's examples in a folder named after the class"
        )
    if len(classes) < 2:
        raise TlsweepError(f"{root} has only one class folder ('{classes[0]}'); a classifier needs at least two")
    unwritable = next((c for c in classes if "\n" in c or "\r" in c or c != c.strip()), None)
    if unwritable is not None:
        raise TlsweepError(
            f"class folder {unwritable!r} in {root} has a line break or leading/trailing spaces in its name, "
            "which labels.txt (one class per line) cannot hold; rename the folder"
        )
    listed = {name: _files(root / name, extensions) for name in classes}
    files = {name: found for name, (found, _) in listed.items()}
    for name, paths in files.items():
        if not paths:
            raise TlsweepError(
                f"class folder '{name}' in {root} has no {'/'.join(extensions)} files; "
                "add some or remove the folder"
            )
    return files, [path for _, others in listed.values() for path in others]


def _files(folder: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """The files of ``extensions`` in ``folder`` and below, sorted, and the entries with such a name that are
    not regular files (a pipe, a device, a dangling link): those are never opened, as reading a pipe
    would wait forever."""
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinked folders are not followed: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for path in (Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(extensions)):
            (found if path.is_file() else others).append(path)  # is_file follows links to files
    return found, [str(p) for p in others]
