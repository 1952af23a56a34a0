"""What a run writes as it goes: its record, its TensorBoard run and HParams, and its progress lines.

Layout inside a job folder::

    trials/trial_<id>.json       one record per run (``tlsweep.records.RunRecord``), rewritten after every epoch
    tensorboard/trial_<id>/      train/ and validation/ scalars, and the run's HParams
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from tlsweep.records import METRICS, Epoch, RunRecord, Stop, run_path, write_run

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What a run's fit found: its kept epoch and why it stopped where it did."""

    best_epoch: int
    best_stage: str
    value: float | None = None  # the objective at the kept epoch (None for a refit: nothing is held out)
    rolled_back: bool = False
    stages: dict[str, Any] = dataclasses.field(default_factory=dict)
    stopped: tuple[Stop, ...] = ()
    val_recall: list[float | None] | None = None

    def stop(self, by: str) -> Stop | None:
        return next((s for s in self.stopped if s.by == by), None)


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinity become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, writing both stages' ``fit`` of a run into one event file per split.

    Keras makes new writers at every ``fit`` (``set_model``) and closes them at its end, so each stage
    got its own event file; files made in the same second sort by a counter as text ("…10" before
    "…9"), and TensorBoard, reading a run's files in name order, then drops the points of a step it
    has passed: stage 1's curves could vanish. Relies on Keras' private ``_writers`` (the one place:
    ``tests/test_search.py`` fails when it changes); ``close`` ends the run's writing."""

    def set_model(self, model: Any) -> None:
        writers = getattr(self, "_writers", {})
        super().set_model(model)
        self._writers = writers  # the run's writers, kept from its first fit

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.flush()  # a stage's points are on disk when it ends; the writers stay open for the next

    def close(self) -> None:
        for writer in getattr(self, "_writers", {}).values():
            writer.close()
        self._writers = {}


class TrialLog(keras.callbacks.Callback):
    """Records one run on disk and in TensorBoard, and prints its progress.

    The runner calls ``start``, then ``begin_stage`` before each ``fit``, and ``finish`` then ``complete``,
    or ``fail``; in between, Keras calls ``on_epoch_end`` once per epoch.
    """

    def __init__(self, job_dir: Path, record: RunRecord, label: str, verbose: bool = True, logdir: Path | None = None):
        super().__init__()
        self.path = run_path(job_dir, record.trial_id)
        self.tensorboard_dir = Path(job_dir) / files.TENSORBOARD_DIR / f"trial_{record.trial_id}"
        # TensorBoard's name for the run: its folder relative to the --logdir users give
        self.session_name = os.path.relpath(self.tensorboard_dir.resolve(), Path(logdir or job_dir).resolve())
        self.label = label
        self.verbose = verbose
        self.stage = "head"
        self.total_epochs = 0
        self._started = time.monotonic()
        self._epoch_started = 0.0
        record.job = Path(job_dir).name
        record.started = now()
        record.tensorboard = str(self.tensorboard_dir.relative_to(job_dir))
        self.record = record

    def start(self) -> None:
        """Write the record (status running) and the run's HParams, and announce the run."""
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)  # a restarted run: no curves twice
        self._write_hparams()
        self._save()
        shown = ", ".join(f"{k}={format_value(v, k)}" for k, v in self.record.hyperparameters.items())
        log.info("%s: %s", self.label, shown)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The Keras callbacks that record a ``fit`` of this run."""
        return [self, self.tensorboard]

    @property
    def tensorboard(self) -> RunBoard:
        if not hasattr(self, "_tensorboard"):
            self._tensorboard = RunBoard(log_dir=str(self.tensorboard_dir), write_graph=False, profile_batch=0)
        return self._tensorboard

    def begin_stage(self, stage: str, total_epochs: int) -> None:
        """Label the coming epochs ``head`` (stage 1) or ``finetune`` (stage 2)."""
        self.stage = stage
        self.total_epochs = total_epochs

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        metrics = {key: _number(logs[key]) if key in logs else None for key in METRICS}
        rate = _number(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        seconds = round(time.monotonic() - self._epoch_started, 3)
        entry = Epoch(epoch + 1, self.stage, **metrics, learning_rate=rate, seconds=seconds)
        self.record.history.append(entry)
        self._save(durable=False)  # atomic still; not flushed to disk: only a machine crash could lose it
        if self.verbose:
            width = len(str(self.total_epochs))
            log.info(
                "  epoch %*d/%d %-8s  loss %s  accuracy %s  val_loss %s  val_accuracy %s  %5.1fs",
                width,
                epoch + 1,
                self.total_epochs,
                self.stage,
                *(_metric(entry.metric(k)) for k in ("loss", "accuracy", "val_loss", "val_accuracy")),
                seconds,
            )

    def finish(self, fitted: Fitted) -> None:
        """Take what the fit found (kept epoch, rollback, stops); ``complete`` then records the run as ended."""
        record = self.record
        record.best_epoch, record.best_stage, record.stages = fitted.best_epoch, fitted.best_stage, fitted.stages
        record.rolled_back, record.val_recall = fitted.rolled_back, fitted.val_recall
        record.stopped = list(fitted.stopped)

    def complete(self) -> None:
        """Mark the run completed, or pruned (once its model, if the job's best, is saved)."""
        pruned = self.record.stop("pruned") is not None
        self.record.status = "pruned" if pruned else "completed"
        self._save(final=True)
        kept = self.record.epoch(self.record.best_epoch)
        metrics = {k: v for k in METRICS if kept is not None and (v := kept.metric(k)) is not None}
        # HParams' session statuses know no "pruned": two metrics say it, and where the run stopped
        metrics.update(pruned=float(pruned), epochs_trained=float(len(self.record.history)))
        self.tensorboard.close()
        self._end_session(True, metrics)

    def fail(self, reason: str) -> None:
        """Mark the run failed with the reason (one line in the terminal; the record keeps all of it)."""
        self.record.status, self.record.error = "failed", reason
        self._save(final=True)
        self.tensorboard.close()
        self._end_session(False, {})
        log.warning("%s failed: %s", self.label, reason.splitlines()[0] if reason else "?")

    def _save(self, final: bool = False, durable: bool = True) -> None:
        self.record.duration_s = round(time.monotonic() - self._started, 3)
        if final:
            self.record.ended = now()
        write_run(self.path, self.record, durable)

    def _write_hparams(self) -> None:
        """The run's row in TensorBoard's HParams table: the sweep and job it belongs to, its choices,
        hyperparameters and settings, named by its run folder relative to the logdir."""
        from tensorboard.plugins.hparams import api as hparams_api

        record = self.record
        values: dict[str, Any] = {"sweep": record.sweep, "job": record.job, **record.choices, **record.hyperparameters}
        values.update(record.settings, trial_seed=record.seed or "", finalist_of=record.finalist_of or "")
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}
        with self._writer() as writer, writer.as_default():
            hparams_api.hparams(values, trial_id=self.session_name)

    def _end_session(self, completed: bool, kept: dict[str, float]) -> None:
        """Log the kept epoch's metrics as the run's metrics (the report's numbers, not the last
        epoch's) and the run's status, so HParams shows what the report shows."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api_pb2
        from tensorboard.plugins.hparams import summary as hparams_summary

        status = api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE
        step = int(self.record.best_epoch or 0)
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


def _metric(value: float | None) -> str:
    """A metric in a fixed width: 4 decimals, so epoch lines align."""
    return "   n/a" if value is None else f"{value:6.4f}"


def format_value(value: Any, key: str = "") -> str:
    """A hyperparameter for a progress line: learning rates to 3 significant digits."""
    if isinstance(value, float):
        rate = key.endswith("learning_rate")
        return f"{value:.3g}" if rate or abs(value) < 1e-2 else f"{value:.4f}".rstrip("0").rstrip(".")
    return "n/a" if value is None else str(value)
