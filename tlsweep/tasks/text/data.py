"""Text datasets: a folder of class sub-folders of ``.txt`` files, a table (CSV, TSV, JSONL), or the demo's texts.

A text is one document: a file's whole contents, or a table row's text column. Texts that are not
UTF-8, empty or huge are skipped and counted, as unreadable images are; a missing folder, a single
class or splits with other classes stop the job in one line, as they do for images.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tlsweep.data import Data, finish, stratified_split
from tlsweep.errors import TlsweepError
from tlsweep.folders import class_files, folder_layout
from tlsweep.groups import DatasetSpec

TEXT_EXTENSIONS = (".txt",)
TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl")
MAX_TEXT_BYTES = 1_000_000  # a text file larger than this (a log, a book) is skipped: not one document
DEMO = "tasks/text/demo.jsonl.gz"  # inside the package: the offline demo's texts (scripts/pretrain_tiny_text.py)


def load_texts(cfg: DatasetSpec) -> Data:
    """The text dataset ``cfg`` names, split and cut to its fraction."""
    loaders = {"text_folder": _folder, "text_table": _table, "text_demo": _demo}
    return finish(loaders[cfg.name](cfg), cfg)  # the name was checked with the config


def read_text(path: Path) -> str | None:
    """A text file's contents, or None when it is not UTF-8, is empty, or is too large to be one document."""
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            return None
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    return text.strip() or None


def _read_classes(files: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    texts, labels, skipped = [], [], []
    for label, (name, paths) in enumerate(files.items()):
        read = [(p, read_text(p)) for p in paths]
        skipped += [str(p) for p, text in read if text is None]
        good = [text for _, text in read if text is not None]
        if not good:
            raise TlsweepError(f"no text of class '{name}' could be read (UTF-8, not empty); check its folder's files")
        texts += good
        labels += [label] * len(good)
    return np.array(texts, dtype=object), np.array(labels, dtype=np.int32), skipped


def _folder(cfg: DatasetSpec) -> Data:
    layout = folder_layout(cfg, "texts")
    train_files, not_files = class_files(layout.train, TEXT_EXTENSIONS)
    x, y, skipped = _read_classes(train_files)
    classes = list(train_files)

    def split(root: Path) -> tuple[np.ndarray, np.ndarray]:
        files, others = class_files(root, TEXT_EXTENSIONS)
        if list(files) != classes:
            raise TlsweepError(
                f"the class folders of {layout.train} and {root} differ "
                f"({', '.join(sorted(set(classes) ^ set(files)))}); give both the same classes"
            )
        texts, labels, unreadable = _read_classes(files)
        skipped.extend(unreadable)
        not_files.extend(others)
        return texts, labels

    if layout.val is None:
        train, val = stratified_split(y, cfg.validation_split, cfg.seed)
        data = Data(x[train], y[train], x[val], y[val], classes, f"folder {layout.root}", skipped, kind="texts")
    else:
        x_val, y_val = split(layout.val)
        data = Data(x, y, x_val, y_val, classes, f"folder {layout.root}", skipped, kind="texts")
    if layout.test is not None:
        data.x_test, data.y_test = split(layout.test)
    data.skipped += not_files
    return data


def _rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[Any, Any]]:
    """(text, label) of each row of a CSV, TSV or JSONL file; one line naming the columns it has if it lacks one."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise TlsweepError(f"dataset.path {path} is not a table; give a {', '.join(TABLE_EXTENSIONS)} file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TlsweepError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    if suffix == ".jsonl":
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TlsweepError(f"{path} line {number} is not JSON ({e.msg}); one JSON object per line") from e
    else:
        rows = list(csv.DictReader(io.StringIO(content), delimiter="\t" if suffix == ".tsv" else ","))
    columns = sorted({k for row in rows if isinstance(row, dict) for k in row})
    for column, key in ((text_column, "text_column"), (label_column, "label_column")):
        if rows and column not in columns:
            raise TlsweepError(
                f"{path} has no column '{column}' (its columns: {', '.join(columns)}); set dataset.{key}=<column>"
            )
    for row in rows:
        yield (row.get(text_column), row.get(label_column)) if isinstance(row, dict) else (None, None)


def read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str | None], list[str]]:
    """A table's texts (None where a row's text is empty or not text) and their labels, as text."""
    texts, labels = [], []
    for text, label in _rows(path, text_column, label_column):
        texts.append(text.strip() or None if isinstance(text, str) else None)
        labels.append("" if label is None else str(label))
    return texts, labels


def _table(cfg: DatasetSpec) -> Data:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise TlsweepError(f"dataset.path {path} does not exist or is not a file; give a CSV, TSV or JSONL file")
    texts, labels = read_table(path, cfg.text_column, cfg.label_column)
    keep = [i for i, (t, label) in enumerate(zip(texts, labels, strict=True)) if t is not None and label]
    kept, first = set(keep), 1 if path.suffix.lower() == ".jsonl" else 2  # a CSV's first row is its header
    skipped = [f"{path}:{i + first}" for i in range(len(texts)) if i not in kept]
    classes = sorted({labels[i] for i in keep})
    if len(classes) < 2:
        found = f"only one class ('{classes[0]}')" if classes else "no labelled text"
        raise TlsweepError(f"{path} has {found}; a classifier needs at least two classes")
    index = {name: i for i, name in enumerate(classes)}
    x = np.array([texts[i] for i in keep], dtype=object)
    y = np.array([index[labels[i]] for i in keep], dtype=np.int32)
    train, val = stratified_split(y, cfg.validation_split, cfg.seed)
    data = Data(x[train], y[train], x[val], y[val], classes, f"table {path}", skipped, kind="texts")
    if cfg.test:
        test_path = Path(str(cfg.test)).expanduser()
        if test_path.resolve() == path.resolve():
            raise TlsweepError(f"dataset.test {test_path} is the training table; give a separate table")
        test_texts, test_labels = read_table(test_path, cfg.text_column, cfg.label_column)
        rows = [(t, lab) for t, lab in zip(test_texts, test_labels, strict=True) if t is not None and lab]
        unknown = sorted({lab for _, lab in rows} - set(classes))
        if unknown:
            raise TlsweepError(f"dataset.test {test_path} has classes the training table lacks: {', '.join(unknown)}")
        data.x_test = np.array([t for t, _ in rows], dtype=object)
        data.y_test = np.array([index[lab] for _, lab in rows], dtype=np.int32)
    return data


def _demo(cfg: DatasetSpec) -> Data:
    """The offline demo: docstrings of the standard library, labelled by package (classes the bundled encoder
    never saw), as ``scripts/pretrain_tiny_text.py`` wrote them once."""
    with gzip.open(str(resources.files("tlsweep").joinpath(DEMO)), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    classes = sorted({row["label"] for row in rows})
    x = np.array([row["text"] for row in rows], dtype=object)
    y = np.array([classes.index(row["label"]) for row in rows], dtype=np.int32)
    train, val = stratified_split(y, cfg.validation_split, cfg.seed)
    about = "standard library docstrings (embedded demo)"
    return Data(x[train], y[train], x[val], y[val], classes, about, kind="texts")
