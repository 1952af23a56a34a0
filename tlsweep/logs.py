"""What a search writes as it goes: each trial's record, TensorBoard run and progress lines, and the
job's best model.

Layout inside a job folder::

    trials/trial_<id>.json       one record per trial, rewritten atomically after every epoch
    tensorboard/trial_<id>/      train/ and validation/ scalars, and the trial's HParams
    best.keras, best.json        the job's best model so far (carrying its trial and classes), and which it is
    labels.txt                   its class names
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras

from tlsweep import files
from tlsweep.settings import Objective

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinity become None."""
    value = float(value)
    return value if math.isfinite(value) else None


class TrialLog(keras.callbacks.Callback):
    """Records one trial on disk and in TensorBoard, and prints its progress.

    The search calls ``start``, then ``begin_stage`` before each ``fit``, and ``finish`` or
    ``fail`` at the end; in between, Keras calls ``on_epoch_end`` once per epoch.
    """

    def __init__(
        self,
        job_dir: Path,
        trial_id: str,
        label: str,
        hyperparameters: dict[str, Any],
        context: dict[str, Any],
        verbose: bool = True,
        logdir: Path | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(job_dir) / files.TRIALS_DIR / f"trial_{trial_id}.json"
        self.tensorboard_dir = Path(job_dir) / files.TENSORBOARD_DIR / f"trial_{trial_id}"
        # TensorBoard's name for the trial: its run folder relative to the --logdir users give
        self.session_name = os.path.relpath(self.tensorboard_dir.resolve(), Path(logdir or job_dir).resolve())
        self.label = label
        self.verbose = verbose
        self.stage = "head"
        self.total_epochs = 0
        self._started = time.monotonic()
        self._epoch_started = 0.0
        self.record: dict[str, Any] = {
            "trial_id": trial_id,
            "job": Path(job_dir).name,
            "status": "running",
            "hyperparameters": hyperparameters,
            **context,
            "history": [],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": 0.0,
            "tensorboard": str(self.tensorboard_dir.relative_to(job_dir)),
        }
        self.tensorboard = keras.callbacks.TensorBoard(
            log_dir=str(self.tensorboard_dir), write_graph=False, profile_batch=0
        )

    def start(self) -> None:
        """Write the record (status running) and the trial's HParams, and announce the trial."""
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)  # a restarted trial: no curves twice
        self._write_hparams()
        self._save()
        shown = ", ".join(f"{k}={format_value(v, k)}" for k, v in self.record["hyperparameters"].items())
        log.info("%s: %s", self.label, shown)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The Keras callbacks that record a ``fit`` of this trial."""
        return [self, self.tensorboard]

    def begin_stage(self, stage: str, total_epochs: int) -> None:
        """Label the coming epochs ``head`` (stage 1) or ``finetune`` (stage 2)."""
        self.stage = stage
        self.total_epochs = total_epochs

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        entry = {"epoch": epoch + 1, "stage": self.stage}
        for key in RECORDED_METRICS:
            entry[key] = _number(logs[key]) if key in logs else None
        entry["learning_rate"] = _number(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        entry["seconds"] = round(time.monotonic() - self._epoch_started, 3)
        self.record["history"].append(entry)
        self._save(durable=False)  # atomic still; not flushed to disk: only a machine crash could lose it
        if self.verbose:
            width = len(str(self.total_epochs))
            log.info(
                "  epoch %*d/%d %-8s  loss %s  accuracy %s  val_loss %s  val_accuracy %s  %5.1fs",
                width,
                epoch + 1,
                self.total_epochs,
                self.stage,
                *(_metric(entry[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")),
                entry["seconds"],
            )

    def finish(self, summary: dict[str, Any]) -> None:
        """Take the trial's summary (best epoch, rollback, …); ``complete`` records it as completed."""
        self.record.update(summary)

    def complete(self) -> None:
        """Mark the trial completed, or pruned (once its model, if the job's best, is saved)."""
        pruned = any(e["by"] == "pruned" for e in self.record.get("stopped", []))
        self.record["status"] = "pruned" if pruned else "completed"
        self._save(final=True)
        kept = next(e for e in self.record["history"] if e["epoch"] == self.record["best_epoch"])
        metrics = {k: kept[k] for k in KEPT_METRICS if isinstance(kept.get(k), (int, float))}
        # HParams' session statuses know no "pruned": two metrics say it, and where the trial stopped
        metrics.update(pruned=float(pruned), epochs_trained=float(len(self.record["history"])))
        self._end_session(True, metrics)

    def fail(self, error: BaseException) -> None:
        """Mark the trial failed with the reason; the search goes on with the next one."""
        self.record.update(status="failed", error=f"{type(error).__name__}: {error}".strip())
        self._save(final=True)
        self._end_session(False, {})
        log.warning("%s failed: %s", self.label, self.record["error"].splitlines()[0])

    def _save(self, final: bool = False, durable: bool = True) -> None:
        self.record["duration_s"] = round(time.monotonic() - self._started, 3)
        if final:
            self.record["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        files.write_json(self.path, self.record, durable)

    def _write_hparams(self) -> None:
        """The trial's row in TensorBoard's HParams table: the sweep and job it belongs to, its choices,
        hyperparameters and settings, named by its run folder relative to the logdir."""
        from tensorboard.plugins.hparams import api as hparams_api

        values = {"sweep": self.record.get("sweep", ""), "job": self.record["job"]}
        values.update(self.record.get("choices", {}), **self.record["hyperparameters"])
        values.update(self.record.get("settings", {}))
        values.update(trial_seed=self.record.get("seed", ""), finalist_of=self.record.get("finalist_of") or "")
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}
        with self._writer() as writer, writer.as_default():
            hparams_api.hparams(values, trial_id=self.session_name)

    def _end_session(self, completed: bool, kept: dict[str, float]) -> None:
        """Log the kept epoch's metrics as the trial's metrics (the report's numbers, not the last
        epoch's) and the trial's status, so HParams shows what the report shows."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api_pb2
        from tensorboard.plugins.hparams import summary as hparams_summary

        status = api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE
        step = int(self.record.get("best_epoch") or 0)
        with self._writer() as writer, writer.as_default():
            for name, value in kept.items():
                tf.summary.scalar(name, value, step=step)
            tf.summary.experimental.write_raw_pb(hparams_summary.session_end_pb(status).SerializeToString(), step=0)

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Any]:
        import tensorflow as tf

        writer = tf.summary.create_file_writer(str(self.tensorboard_dir))
        try:
            yield writer
        finally:
            writer.close()


RECORDED_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1")
KEPT_METRICS = RECORDED_METRICS  # logged for the kept epoch, as HParams metrics


def _metric(value: float | None) -> str:
    """A metric in a fixed width: 4 decimals, so epoch lines align."""
    return "   n/a" if value is None else f"{value:6.4f}"


def format_value(value: Any, key: str = "") -> str:
    """A hyperparameter for a progress line: learning rates to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}" if key == "learning_rate" or abs(value) < 1e-2 else f"{value:.4f}".rstrip("0").rstrip(".")
    return "n/a" if value is None else str(value)


class BestModel:
    """The job's best model on disk — ``best.keras``, ``best.json``, ``labels.txt`` — and the one place
    that reads, locks and saves it. The processes of a distributed search share it through a file lock.
    ``best.keras`` carries the job, trial and classes it holds (``files.model_origin``)."""

    def __init__(self, job_dir: Path, objective: Objective, classes: list[str]) -> None:
        self.job_dir, self.objective, self.classes = Path(job_dir), objective, list(classes)

    def read(self) -> dict[str, Any]:
        """Which trial ``best.keras`` holds (value, trial id, hyperparameters); empty when there is none yet."""
        path = self.job_dir / files.BEST_RECORD
        if not path.is_file() or not (self.job_dir / files.BEST_MODEL).is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def offer(self, record: dict[str, Any], model: keras.Model) -> dict[str, Any]:
        """Save ``model`` (trial ``record``'s, at its best epoch) when it beats the best so far; returns the best."""
        with files.locked(self.job_dir / ".best.lock"):
            best = self.read()  # another process may have saved a better trial meanwhile
            if not best or best["value"] is None or self.objective.better(record[self.objective.name], best["value"]):
                best = self._save(record, model)
        return best

    def keep(self, record: dict[str, Any], model: keras.Model, finalist: dict[str, Any]) -> dict[str, Any]:
        """Save ``model`` as the job's best whatever its single value: the winning finalist's run closest
        to its configuration's mean (``finalist``: the mean, its interval and the number of runs)."""
        with files.locked(self.job_dir / ".best.lock"):
            return self._save(record, model, finalist=finalist)

    def _save(self, record: dict[str, Any], model: keras.Model, **extra: Any) -> dict[str, Any]:
        origin = {"job": self.job_dir.name, "trial_id": record["trial_id"], "classes": self.classes}
        files.save_model(model, self.job_dir / files.BEST_MODEL, origin)
        files.write_text(self.job_dir / files.LABELS, "\n".join(self.classes) + "\n")
        best = {
            "value": record.get(self.objective.name),  # a refit has no held-out value
            "trial_id": record["trial_id"],
            "hyperparameters": record["hyperparameters"],
            **extra,
        }
        files.write_json(self.job_dir / files.BEST_RECORD, best)
        return best
