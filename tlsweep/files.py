"""The files a job leaves behind: their names, and atomic writes (a kill leaves the old or the new file)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Inside a job folder (a single run's folder, or one job of a sweep):
JOB_RECORD = "job.json"  # status, data summary, best trial
JOB_LOCK = ".job.lock"  # held by the process running the job
LOG_FILE = "tlsweep.log"  # the job's log (conf/hydra/job_logging), TensorFlow's own lines included
TRIALS_DIR = "trials"  # trial_<id>.json, one record per trial
TENSORBOARD_DIR = "tensorboard"  # trial_<id>/, one TensorBoard run per trial
TUNER_DIR = "tuner"  # KerasTuner's own project
BEST_MODEL = "best.keras"
BEST_RECORD = "best.json"  # which trial best.keras holds: shared by every process of a distributed search
KEPT_DIR = "kept"  # trial_<id>.npz: the weights of runs that may still win, until the job's model is saved
LABELS = "labels.txt"

# Inside a run's or sweep's folder, the exported best model (tlsweep.export):
EXPORT_DIR = "best"
EXPORT_RECORD = "export.json"  # what the export holds; tlsweep.predict reads it
EVALUATION = "evaluation.json"  # the held-out test
MODEL_CARD = "model_card.md"


def _umask() -> int:
    """The process's umask (read by setting it, so once, at import, before any thread writes files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: mkstemp's own 0600 hides results from teammates


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions the user's umask allows, as a plainly written file would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
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


MODEL_ORIGIN = "tlsweep.json"  # inside a saved .keras file (a zip): which job and trial the model is, its classes


def save_model(model: Any, path: Path, origin: dict[str, Any] | None = None) -> None:
    """Save a Keras model to ``path`` (``.keras``) atomically, carrying ``origin`` inside the file.

    Keras loads the file as usual (it reads only its own entries); ``model_origin`` reads ``origin``
    back, so an export can check that a model file is the trial the records name.
    """

    def write(tmp: Path) -> None:
        model.save(tmp)
        if origin is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(MODEL_ORIGIN, json.dumps(origin))

    atomic_write(path, write, suffix=".keras")


def model_origin(path: Path) -> dict[str, Any] | None:
    """The origin a ``.keras`` file carries (see ``save_model``); None if it carries none or cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(MODEL_ORIGIN))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def damaged_model(path: Path) -> bool:
    """Whether a ``.keras`` file is there but not whole (cut short by a kill, a full disk or a copy): Keras
    would fail to load it, with a message that does not say so."""
    return Path(path).is_file() and not zipfile.is_zipfile(path)


@contextlib.contextmanager
def locked(path: Path, busy: Callable[[], Exception] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block, across processes.

    Without ``busy`` it waits for the lock; with it, it raises ``busy()`` at once when another process
    holds the lock. The lock goes with the process, however it ends.
    """
    try:
        import fcntl
    except ImportError:  # Windows: one process per job folder there, nothing to share
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if busy is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None  # only the non-blocking lock, taken with busy, raises it
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
