"""The files a job leaves behind: their names, and atomic writes (a kill leaves the old or the new file)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Inside a job folder (a single run's folder, or one job of a sweep):
JOB_RECORD = "job.json"  # status, data summary, best trial
TRIALS_DIR = "trials"  # trial_<id>.json, one record per trial
TENSORBOARD_DIR = "tensorboard"  # trial_<id>/, one TensorBoard run per trial
TUNER_DIR = "tuner"  # KerasTuner's own project
BEST_MODEL = "best.keras"
BEST_RECORD = "best.json"  # which trial best.keras holds: shared by every process of a distributed search
LABELS = "labels.txt"

# Inside a run's or sweep's folder, the exported best model (tlsweep.export):
EXPORT_DIR = "best"
EXPORT_RECORD = "export.json"  # what the export holds; tlsweep.predict reads it
EVALUATION = "evaluation.json"  # the held-out test
MODEL_CARD = "model_card.md"


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically; ``durable=False`` skips the flush to disk (progress notes)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    atomic_write(path, write)


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (see ``write_text``)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n", durable)


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model to ``path`` (``.keras``) atomically."""
    atomic_write(path, lambda tmp: model.save(tmp), suffix=".keras")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block, across processes."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per job folder there, nothing to share
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
