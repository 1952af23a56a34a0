"""What a job folder is for, and who runs it: the settings and data of its results, and ``job.json``.

A job records both in ``job.json`` when it starts. A job that finds a folder holding another
run refuses it (a new run never continues an old one by accident), and ``resume`` refuses a folder
whose settings or data changed since, saying what changed: trials trained on different data are
never ranked together, and a model is never exported with another dataset's labels. ``claim``
holds the folder while a job runs and keeps its record: running, then completed, failed or
interrupted, with why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.errors import TlsweepError
from tlsweep.folders import changes
from tlsweep.logs import now
from tlsweep.records import JobRecord, RecordError, read_job, write_job
from tlsweep.spec import JobSpec
from tlsweep.tasks import task_of

log = logging.getLogger(__name__)

REPLACED_DIR = "replaced"  # where a job's trials go when it restarts on changed data
JOB_OUTPUTS = ("trials", "tensorboard", "tuner", "best.keras", "best.json", "labels.txt")


def job_identity(spec: JobSpec) -> dict[str, Any]:
    """The job's settings that decide its results (``JobSpec.identity``), and its data's fingerprint."""
    return {"config": spec.identity(), "data": task_of(spec.dataset).fingerprint(spec.dataset)}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for each setting that differs (a setting an older tlsweep did not record is not
    compared)."""
    keys = sorted(k for k in old if old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(unset)')} → {new.get(k, '(unset)')}" for k in keys]


@contextlib.contextmanager
def claim(job_dir: Path, spec: JobSpec, choices: dict[str, Any]) -> Iterator[JobRecord]:
    """Hold ``job_dir`` for this process and keep its ``job.json``: the record the ``with`` block fills in is
    written as completed, or failed or interrupted with the reason (and the exception goes on). A resumed job
    that completed is yielded as it is, and left so."""
    job_dir = Path(job_dir)

    def busy() -> TlsweepError:
        return TlsweepError(
            f"job {job_dir} is being run by another process ({_runner(job_dir)}); wait for it to end, or stop it first"
        )

    with files.locked(job_dir / files.JOB_LOCK, busy):
        previous = _previous(job_dir)
        record = JobRecord(job_dir.name, "running", choices, socket.gethostname(), os.getpid(), now(),
                           config=spec.config())  # fmt: skip
        try:
            record.identity = job_identity(spec)
            set_aside = check_folder(job_dir, previous, record.identity, bool(spec.resume), spec.allow_data_change)
        except TlsweepError as e:
            if previous is None:  # a new job's mistake is recorded in its own folder; another run's record is kept
                write_job(job_dir, JobRecord(**{**record.__dict__, "status": "failed", "error": str(e)}))
            raise
        rebuild = previous is not None and previous.status == "completed" and _model_damaged(job_dir)
        if previous is not None and previous.status in ("completed", "stopped") and not set_aside and not rebuild:
            log.info("job %s already %s; kept as it is (resume)", job_dir.name, previous.status)
            yield previous
            return
        if set_aside:
            log.warning("the data changed since job %s ran: its earlier trials are kept in %s", job_dir.name, set_aside)
        started = time.monotonic()
        write_job(job_dir, record)
        try:
            yield record
            record.status = "completed" if record.status == "running" else record.status  # or paused by a race
        except BaseException as e:
            record.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            record.error = str(e) if isinstance(e, TlsweepError) else f"{type(e).__name__}: {e}"
            raise
        finally:
            record.duration_s = round(time.monotonic() - started, 1)
            try:
                write_job(job_dir, record)
            except OSError as e:  # e.g. a full disk: keep the error that got us here, and the old record
                log.warning("could not update %s: %s", job_dir / files.JOB_RECORD, e)


def _model_damaged(job_dir: Path) -> bool:
    """Whether a completed job's model is damaged on disk: then its resume trains the answer again from the
    records (its finished trials are kept), the only way to a model that matches them."""
    if not files.damaged_model(job_dir / files.BEST_MODEL):
        return False
    log.warning("job %s: %s is damaged (cut short?); training its answer again from its records", job_dir.name,
                files.BEST_MODEL)  # fmt: skip
    return True


def _previous(job_dir: Path) -> JobRecord | None:
    """The job's record from an earlier run in this folder; None if there is none."""
    try:
        return read_job(job_dir)
    except RecordError:
        return JobRecord(job_dir.name, "unreadable")


def _runner(job_dir: Path) -> str:
    """Which process runs the job, as its record says."""
    record = _previous(job_dir) or JobRecord(job_dir.name)
    return f"pid {record.pid or '?'} on {record.host or '?'}, started {record.started or '?'}"


def check_folder(
    job_dir: Path, previous: JobRecord | None, identity: dict[str, Any], resume: bool, allow_data_change: bool
) -> Path | None:
    """Refuse ``job_dir`` when it holds another run, or (resuming) a run of other settings or other data.

    With ``allow_data_change`` a resumed job whose data changed keeps its earlier trials in
    ``<job>/replaced/<time>/`` and starts its search afresh: that folder is returned.
    """
    if previous is None:
        return None
    if not resume:
        raise TlsweepError(
            f"{job_dir} already holds a run (started {previous.started or '?'}, {previous.status}); tlsweep never "
            f"mixes two runs in one folder: give a new folder, or continue that run with resume={job_dir}"
        )
    earlier = previous.identity
    if not earlier:
        return None  # a job folder from before identities were recorded: nothing to compare
    differences = config_changes(earlier.get("config", {}), identity["config"])
    if differences:
        raise TlsweepError(
            f"{job_dir} holds a run with other settings ({'; '.join(differences[:3])}"
            f"{'; …' if len(differences) > 3 else ''}); resume with the settings it ran with, "
            "or start a new run without resume"
        )
    changed = changes(earlier.get("data", {}), identity["data"])
    if not changed:
        return None
    if not allow_data_change:
        raise TlsweepError(
            f"the data of {job_dir} changed since it ran ({'; '.join(changed[:4])}{'; …' if len(changed) > 4 else ''});"
            " restore the data and resume, or resume with allow_data_change=true to start this job's trials afresh "
            f"(the earlier ones are kept in {job_dir / REPLACED_DIR})"
        )
    return _set_aside(job_dir)


def _set_aside(job_dir: Path) -> Path:
    """Move the job's trials, TensorBoard runs, tuner state and best model into ``replaced/<time>/``."""
    target = job_dir / REPLACED_DIR / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    target.mkdir(parents=True)
    for name in JOB_OUTPUTS:
        if (job_dir / name).exists():
            shutil.move(str(job_dir / name), str(target / name))
    return target
