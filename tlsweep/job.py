"""One Hydra job: config → backbone → dataset → feature cache → KerasTuner search → best model.

Importing this module loads TensorFlow and Keras (``__main__`` imports it once a job starts).

``job.json`` in the job folder says whether the job is running, completed or failed (and why),
so a sweep's results can be read from disk whatever happened to the process.
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from tlsweep import files, paths
from tlsweep.backbones import load_backbone
from tlsweep.batches import CachedData, PlainData
from tlsweep.cache.features import plan_cache
from tlsweep.cache.plan import memory_budget, resident_memory
from tlsweep.cache.store import Store, entries, gigabytes
from tlsweep.data import ImageData, class_report, class_weights, load_dataset
from tlsweep.device import configure
from tlsweep.errors import TlsweepError
from tlsweep.finalists import Finalists
from tlsweep.identity import check_folder, job_identity
from tlsweep.logs import BestModel, format_value
from tlsweep.model import SharedClassifier, augmentation
from tlsweep.records import load_job, read_json
from tlsweep.settings import Objective, TrialSettings, budget_seconds, check_depths, finetune_epochs, validate
from tlsweep.stopping import make_pruner
from tlsweep.trial import TwoStageTrial
from tlsweep.tuners import BudgetSpent, JobContext, join_search, make_tuner

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig, job_dir: Path, choices: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """Run one search in ``job_dir`` and return its job record; records failures before raising.

    ``root`` is the run's or sweep's folder (the job's own folder when it runs alone). One process
    at a time runs a job folder; a worker of a distributed search shares its chief's.
    """
    job_dir = Path(job_dir)
    root = Path(root) if root is not None else job_dir
    if cfg.distributed.role == "worker":  # the chief keeps the job's record; a worker only runs trials
        return _search(cfg, job_dir, choices, root)

    def busy() -> TlsweepError:
        return TlsweepError(
            f"job {job_dir} is being run by another process ({_runner(job_dir)}); wait for it to end, or stop it first"
        )

    with files.locked(job_dir / files.JOB_LOCK, busy):
        return _run_alone(cfg, job_dir, choices, root)


def _run_alone(cfg: DictConfig, job_dir: Path, choices: dict[str, Any], root: Path) -> dict[str, Any]:
    previous = _read_record(job_dir)
    record: dict[str, Any] = {
        "job": job_dir.name,
        "status": "running",
        "choices": choices,
        "host": socket.gethostname(),  # with pid: lets a report tell a crashed job from a running one
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        record["identity"] = job_identity(cfg)
        set_aside = check_folder(job_dir, previous, record["identity"], bool(cfg.resume), bool(cfg.allow_data_change))
    except TlsweepError as e:
        if previous is None:  # a new job's mistake is recorded in its own folder; another run's record is kept
            files.write_json(job_dir / files.JOB_RECORD, {**record, "status": "failed", "error": str(e)})
        raise
    if previous is not None and previous.get("status") == "completed" and not set_aside:
        log.info("job %s already completed; kept as it is (resume)", job_dir.name)
        return previous
    if set_aside:
        log.warning("the data changed since job %s ran: its earlier trials are kept in %s", job_dir.name, set_aside)
    started = time.monotonic()
    files.write_json(job_dir / files.JOB_RECORD, record)
    try:
        record.update(_search(cfg, job_dir, choices, root), status="completed")
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        message = str(e) if isinstance(e, TlsweepError) else f"{type(e).__name__}: {e}"
        record.update(status=status, error=message)
        raise
    finally:
        record["duration_s"] = round(time.monotonic() - started, 1)
        try:
            files.write_json(job_dir / files.JOB_RECORD, record)
        except OSError as e:  # e.g. a full disk: keep the error that got us here, and the old record
            log.warning("could not update %s: %s", job_dir / files.JOB_RECORD, e)
    return record


def _read_record(job_dir: Path) -> dict[str, Any] | None:
    """The job's ``job.json`` from an earlier run in this folder; None if there is none."""
    record, problem = read_json(job_dir / files.JOB_RECORD)
    return {"status": "unreadable"} if problem else record


def _runner(job_dir: Path) -> str:
    """Which process runs the job, as its record says."""
    record = _read_record(job_dir) or {}
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {record.get('started', '?')}"


def _search(cfg: DictConfig, job_dir: Path, choices: dict[str, Any], root: Path) -> dict[str, Any]:
    """The job's steps: check, set up the device, load the backbone and data, search, summarise."""
    validate(cfg)
    started = time.monotonic()  # the budget's clock: everything the job does counts
    configure(cfg)  # GPUs, precision, threads: before TensorFlow builds anything
    keras.utils.set_random_seed(int(cfg.seed))
    tf.config.experimental.enable_op_determinism()  # same seed, same results on CPU (see README)
    image_size = int(cfg.dataset.image_size or cfg.backbone.image_size)
    backbone = load_backbone(cfg.backbone, image_size)  # first: a weights problem should not wait for the data
    check_depths(cfg, backbone.num_layers, backbone.name, backbone.unit)
    budget = memory_budget(cfg.feature_cache.memory_gb, jobs_at_once())
    images = Store(Path(cfg.feature_cache.dir)) if cfg.cache else None  # decoded images, kept for later jobs
    room = (budget - resident_memory()) / 2  # the images, and their copy in the input pipeline
    data = load_dataset(cfg.dataset, image_size, images, max_bytes=room)
    log.info(data.summary())
    per_class, warnings = class_report(data, str(cfg.tuner.objective))
    log.info(per_class)
    for warning in warnings:
        log.warning(warning)
    weights = class_weights(cfg.class_weight, data.y_train, data.class_names)
    spent = spent_before(job_dir) if cfg.budget is not None else 0.0
    if spent:
        log.info("budget: this job's earlier runs spent %.0fs of it in trials (resume)", spent)
    search_deadline, deadline = deadlines(cfg, started - spent)
    job = _context(cfg, job_dir, root, choices, data, image_size, search_deadline)
    if job.best.read():
        log.info("resuming: finished trials are kept (best so far trial_%s)", job.best.read()["trial_id"])
    classifier = SharedClassifier(
        backbone,
        len(data.class_names),
        float(cfg.finetune.dropout),
        lambda: augmentation(cfg.augmentation, int(cfg.seed)),
        bool(cfg.jit_compile),
    )
    cache = plan_cache(cfg, backbone, data, classifier.network, budget) if cfg.cache else None
    batch_size = int(cfg.dataset.batch_size)
    source = CachedData(cache, batch_size) if cache else PlainData(data, batch_size)
    trial = TwoStageTrial(TrialSettings.from_config(cfg), classifier, source, weights)
    role = join_search(cfg.distributed)
    tuner = make_tuner(cfg.tuner, trial, job, int(cfg.seed))
    searching = time.monotonic()  # the search's time includes its feature cache
    if cache is not None and role != "chief":  # the chief hands out trials, it trains none
        cache.prepare(classifier.network)  # the pretrained network, before a trial trains it
    log.info("searching with %s in %s%s", cfg.tuner.name, job_dir, f" as the {role}" if role else "")
    out_of_time = _run_search(tuner, job_dir, int(cfg.tuner.max_consecutive_failed_trials))
    if out_of_time:
        trials = len(tuner.oracle.trials)
        log.info("stopped by the budget (%s) after %d trial%s", cfg.budget, trials, "" if trials == 1 else "s")
    if role is None and cfg.finalists.top > 0:  # a distributed search's chief trains nothing; its workers stop
        finalists = Finalists(
            trial,
            job_dir,
            job.recorded(trial.settings.objective.name),
            int(cfg.seed),
            int(cfg.finalists.top),
            int(cfg.finalists.seeds),
            bool(cfg.verbose),
            job.logdir,
            refit=(lambda: PlainData(data.merged(), batch_size)) if cfg.finalists.refit else None,
            deadline=deadline,
        )
        finalists.run(job.best)
    search_s = round(time.monotonic() - searching, 1)
    if cache is not None:
        store = cache.store
        held = gigabytes(sum(e.bytes for e in entries(store.root)))
        log.info(
            "feature cache: %d parts computed, %d reused; %s holds %s (python -m tlsweep.cache list)",
            store.built,
            store.reused,
            store.root,
            held,
        )
    return {**_summary(cfg, job, tuner, role, data, search_s), **({"stopped_by_budget": True} if out_of_time else {})}


def deadlines(cfg: DictConfig, started: float) -> tuple[float | None, float | None]:
    """When the search must stop, and the whole job (``time.monotonic()``; None without a budget).

    The finalists' runs get the budget's share they would have if every run took the same time:
    ``top × (seeds − 1)`` runs beside ``tuner.max_trials``. The search gets the rest, and the
    finalists whatever the search leaves.
    """
    budget = budget_seconds(cfg.budget)
    if budget is None:
        return None, None
    finalists = int(cfg.finalists.top) * max(int(cfg.finalists.seeds) - 1, 0)
    trials = int(cfg.tuner.max_trials) if cfg.tuner.name != "hyperband" else 0
    share = finalists / (trials + finalists) if trials and finalists else 0.0
    return started + budget * (1 - share), started + budget


def spent_before(job_dir: Path) -> float:
    """Seconds this job's earlier runs spent in trials, as their records say: a resumed job's budget
    counts them (the time they spent loading and caching is not recorded, and not counted)."""
    total = 0.0
    for path in (job_dir / files.TRIALS_DIR).glob("trial_*.json"):
        record, problem = read_json(path)
        if record and not problem:
            total += float(record.get("duration_s") or 0.0)
    return total


def jobs_at_once() -> int:
    """How many jobs a parallel launcher runs side by side on this machine (they share its memory)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return max(int(HydraConfig.get().launcher.get("n_jobs") or 1), 1)
    except (ValueError, AttributeError, TypeError):  # not run by Hydra, or a launcher without n_jobs
        return 1


def _context(
    cfg: DictConfig,
    job_dir: Path,
    root: Path,
    choices: dict[str, Any],
    data: ImageData,
    image_size: int,
    deadline: float | None = None,
) -> JobContext:
    """What every trial of the job records beside its hyperparameters, and where."""
    logdir = paths.tensorboard_logdir(root)
    classes = data.class_names
    return JobContext(
        job_dir=job_dir,
        logdir=logdir,
        sweep=str(root.resolve().relative_to(logdir)) if root.resolve() != logdir else root.name,
        choices={k: str(v) for k, v in choices.items()},
        settings=job_settings(cfg, image_size),
        data={
            "classes": classes,
            "train_images": int(len(data.y_train)),
            "val_images": int(len(data.y_val)),
            "test_images": 0 if data.y_test is None else int(len(data.y_test)),
            "class_counts": [int(n) for n in np.bincount(data.y_train, minlength=len(classes))],
        },
        best=BestModel(job_dir, Objective(str(cfg.tuner.objective)), classes),
        verbose=bool(cfg.verbose),
        seed=int(cfg.seed),
        replicate=int(cfg.finalists.replicate),
        pruner=make_pruner(cfg.pruning),
        deadline=deadline,
    )


def job_settings(cfg: DictConfig, image_size: int) -> dict[str, Any]:
    """Fixed settings of a job worth comparing across jobs in TensorBoard's HParams table."""
    settings = {
        "image_size": image_size,
        "batch_size": cfg.dataset.batch_size,
        "head_epochs": cfg.finetune.head_epochs,
        "finetune_epochs": finetune_epochs(cfg.finetune),
        "lr_scale": cfg.finetune.lr_scale,
        "dropout": cfg.finetune.dropout,
        "weights": str(cfg.backbone.weights),
        "seed": cfg.seed,
    }
    return OmegaConf.to_container(OmegaConf.create(settings), resolve=True)  # type: ignore[return-value]


def _run_search(tuner: Any, job_dir: Path, max_failures: int) -> bool:
    """KerasTuner's search; its stop after consecutive failed trials becomes one line naming the last reason.
    Returns whether the job's time budget stopped it."""
    gc.freeze()  # the backbone, images and classifier outlive every trial: spare the collector rescanning them
    try:
        tuner.search(verbose=0)
    except BudgetSpent:
        return True
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        raise TlsweepError(  # KerasTuner's message carries the last trial's traceback: the reasons are in the records
            f"{max_failures} trials in a row failed, so the search stopped; the reasons are "
            f"in {job_dir / files.TRIALS_DIR} and {job_dir / files.LOG_FILE} (last: {_last_failure(job_dir)})"
        ) from None
    finally:
        gc.unfreeze()
    return False


def _summary(
    cfg: DictConfig, job: JobContext, tuner: Any, role: str | None, data: ImageData, search_s: float
) -> dict[str, Any]:
    """The job's record once the search is over (a worker's is empty: its chief keeps the job's record)."""
    job_dir = job.job_dir
    best = job.best.read()  # on disk: in a distributed search other processes ran trials too
    trials = list(tuner.oracle.trials.values()) if role != "worker" else []  # a worker sees only its own
    pruned = sum(t.status == "pruned" for t in load_job(job_dir, job_dir).trials) if trials else 0
    completed = sum(t.status == "COMPLETED" for t in trials) - pruned  # KerasTuner counts pruned trials completed
    if not best:
        raise TlsweepError(
            f"every trial of this job failed; the reasons are in {job_dir / files.TRIALS_DIR} and "
            f"{job_dir / files.LOG_FILE}"
        )
    if role == "worker":
        log.info("worker done: the chief reports the search; best so far trial_%s", best["trial_id"])
        return {}
    log.info(
        "job done: %d of %d trials completed%s; best trial_%s %s %.4f with %s",
        completed,
        len(trials),
        f", {pruned} pruned" if pruned else "",
        best["trial_id"],
        cfg.tuner.objective,
        best["value"],
        ", ".join(f"{k}={format_value(v, k)}" for k, v in best["hyperparameters"].items()),
    )
    log.info(
        "outputs in %s (best model %s); compare trials: tensorboard --logdir %s",
        job_dir,
        job_dir / files.BEST_MODEL,
        shlex.quote(paths.shown(job.logdir)),
    )
    return {
        "trials": len(trials),
        "completed_trials": completed,
        "pruned_trials": pruned,
        "best": best,
        **job.data,
        "skipped_images": data.skipped,
        "search_s": search_s,  # the search alone (feature cache included), without loading images and backbone
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _last_failure(job_dir: Path) -> str:
    """The error of the job's most recently ended failed trial, first line only."""
    failed = [t for t in load_job(job_dir, job_dir).trials if t.status == "failed"]
    last = max(failed, key=lambda t: str(t.record.get("ended", "")), default=None)
    return str(last.error or "?").splitlines()[0] if last else "unknown"
