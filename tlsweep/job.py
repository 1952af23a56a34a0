"""One Hydra job: spec → device → backbone → data → classifier → feature cache → search → finalists → winner.

Each step is one call into the module that owns it; this module only puts them in order. Importing
it loads TensorFlow and Keras (``__main__`` imports it once a job starts). ``job.json`` in the job
folder says whether the job is running, completed or failed (and why): ``tlsweep.identity.claim``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tlsweep import paths
from tlsweep.batches import CachedData, PlainData
from tlsweep.cache.features import FeatureCache, plan_cache
from tlsweep.cache.plan import images_room, memory_budget
from tlsweep.cache.store import Store
from tlsweep.data import Data, class_weights, log_facts
from tlsweep.device import configure
from tlsweep.errors import TlsweepError
from tlsweep.finalists import keep_winner, run_finalists
from tlsweep.identity import claim
from tlsweep.model import SharedClassifier
from tlsweep.progress import count
from tlsweep.records import JobRecord, read_runs, spent_in_runs
from tlsweep.results import Winner
from tlsweep.runs import BestModel, RunContext, Runner
from tlsweep.spec import JobSpec
from tlsweep.stopping import make_pruner
from tlsweep.tasks import task_of
from tlsweep.trial import TwoStageTrial
from tlsweep.tuners import join_search, make_tuner, run_search

log = logging.getLogger(__name__)


def run_job(spec: JobSpec, job_dir: Path, choices: dict[str, Any], root: Path | None = None) -> JobRecord:
    """Run one job in ``job_dir`` and return its record; its failures are recorded before they are raised.

    ``root`` is the run's or sweep's folder (the job's own folder when it runs alone). One process
    at a time runs a job folder; a worker of a distributed search shares its chief's.
    """
    job_dir, root = Path(job_dir), Path(root or job_dir)
    if spec.distributed.role == "worker":  # the chief keeps the job's record; a worker only runs trials
        return JobRecord(job_dir.name, summary=_steps(spec, job_dir, choices, root))
    with claim(job_dir, spec, choices) as record:
        if record.status == "running":  # not a completed job kept as it was
            record.summary.update(_steps(spec, job_dir, choices, root))
            if spec.trials_now() is not None:
                record.status = "paused"  # until the race's next round resumes it
    return record


def _steps(spec: JobSpec, job_dir: Path, choices: dict[str, Any], root: Path) -> dict[str, Any]:
    started = time.monotonic() - (spent_in_runs(job_dir) if spec.budget_s else 0.0)  # a resumed job's runs count
    configure(spec)  # GPUs, precision, threads: before TensorFlow builds anything
    keras.utils.set_random_seed(spec.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same results on CPU (docs/how-to/troubleshooting.md)
    task = task_of(spec.dataset)  # images or texts: what they add to the pipeline
    backbone = task.load_backbone(spec)  # first: a weights problem should not wait for the data
    spec.check_depths(backbone.num_layers, backbone.name, backbone.unit)
    budget = memory_budget(spec.feature_cache.memory_gb, paths.jobs_at_once())
    store = Store(Path(spec.feature_cache.dir)) if spec.cache else None  # decoded images, kept for later jobs
    data = log_facts(task.load_data(spec.dataset, spec.image_size, store, images_room(budget)), spec.objective.name)
    fresh_augmentation = partial(task.augmentation, spec.augmentation, spec.seed)
    classifier = SharedClassifier(backbone, len(data.class_names), fresh_augmentation, spec.jit_compile)
    cache = plan_cache(spec, backbone, data, task, classifier.network, budget) if spec.cache else None
    runner = _runner(spec, job_dir, root, choices, data, classifier, cache)
    role = join_search(spec.distributed)
    racing = spec.trials_now()  # a race's early round: this many trials, no finalists yet
    tuner = make_tuner(runner, cap=racing)
    searching = time.monotonic()  # the search's time: its feature cache and finalists, not the loading before
    if cache is not None and role != "chief":  # the chief hands out trials, it trains none
        cache.prepare(classifier.network)  # the pretrained network, before a trial trains it
    log.info("searching with %s in %s%s", spec.tuner.name, job_dir, f" as the {role}" if role else "")
    runner.deadline = spec.deadline(started, search_only=True)
    stopped = run_search(tuner)
    if stopped == "budget":
        log.info("stopped by the budget after %s", count(len(tuner.oracle.trials), "trial"))
    if role == "worker":
        runner.settle(set())  # the chief runs no finalists: no run of this worker's is needed again
        log.info("worker done: the chief reports the search")
        return {}
    winner = None
    if role is None and racing is None:  # a distributed search's chief trains nothing; a race decides first
        runner.deadline = spec.deadline(started, search_only=False)
        run_finalists(runner)
        winner = keep_winner(runner)
    if cache is not None:
        log.info(cache.store.line())
    return _summary(spec, runner, data, winner, stopped, time.monotonic() - searching)


def _runner(
    spec: JobSpec,
    job_dir: Path,
    root: Path,
    choices: dict[str, Any],
    data: Data,
    classifier: SharedClassifier,
    cache: FeatureCache | None,
) -> Runner:
    """The job's runner: its trial on the cache's batches (or the images'), what every run records, the
    job's best model, the pruning rule, and the images a refit trains on."""
    source = CachedData(cache) if cache else PlainData(data)
    weights = class_weights(spec.class_weight, data.y_train, data.class_names)
    trial = TwoStageTrial(spec, classifier, source, weights)
    logdir = paths.tensorboard_logdir(root)
    sweep = str(root.resolve().relative_to(logdir)) if root.resolve() != logdir else root.name
    context = RunContext(job_dir, logdir, sweep, {k: str(v) for k, v in choices.items()}, spec.hparams(), data.facts())
    best = BestModel(job_dir, spec, data.class_names)
    if best.read():
        log.info("resuming: finished trials are kept (best so far trial_%s)", best.read()["trial_id"])
    refit = partial(PlainData, data.merged()) if spec.finalists.refit else None
    runner = Runner(spec, trial, context, best, make_pruner(spec.pruning), refit_data=refit)
    runner.recover()  # a resumed job (or a race's next round) holds again the weights it kept
    return runner


def _summary(
    spec: JobSpec, runner: Runner, data: Data, winner: Winner | None, stopped: str | None, seconds: float
) -> dict[str, Any]:
    """The job's record once it is done: its trials, its answer, its data; and the lines that say so."""
    job_dir = runner.job_dir
    search = [r for r in read_runs(job_dir) if r.is_search]
    completed, pruned = (sum(r.status == status for r in search) for status in ("completed", "pruned"))
    best = runner.best.read()
    if not best:
        raise TlsweepError(f"every trial of this job failed; the reasons are in {job_dir / 'trials'} and its log")
    answer = f"trial_{best['trial_id']} {spec.objective.name} {best['value']:.4f}" if winner is None else winner.line()
    trials = f"{completed} of {len(search)} trials completed{f', {pruned} pruned' if pruned else ''}"
    summary = {"trials": len(search), "completed_trials": completed, "pruned_trials": pruned, "best": best}
    summary.update(data.facts(), skipped_images=data.skipped, search_s=round(seconds, 1))
    race = spec.race
    if spec.trials_now() is None:
        log.info("job done: %s; best %s", trials, answer)
    else:
        log.info("race round %d of %d done: %s; best %s; the race decides whether this job goes on",
                 race.round, race.rounds, trials, answer)  # fmt: skip
    if race.round:  # where the job is in its race, for the race sweeper
        summary["race"] = {"round": race.round, "rounds": race.rounds, "search_trials": spec.search_trials()}
    log.info("outputs in %s; compare trials: tensorboard --logdir %s", job_dir, paths.shown(runner.context.logdir))
    return {**summary, **({"stopped_by_budget": True} if stopped == "budget" else {})}
