"""KerasTuner, and only here: its tuners run tlsweep's two-stage trials and keep their state.

KerasTuner chooses each trial's hyperparameters (random, Bayesian, Hyperband, grid), keeps its
project in ``<job>/tuner`` (so a killed search resumes), and, in distributed mode, hands trials
to workers. ``SweepTuner.run_trial`` hands each trial to the job's ``Runner`` as a ``RunPlan``,
the way every run of the job is trained. This module supports keras-tuner 1.4.8, the version
``pyproject.toml`` pins (``tests/test_tuners.py`` checks it).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import socket
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from tlsweep import files
from tlsweep.errors import TlsweepError
from tlsweep.groups import DistributedSpec
from tlsweep.objective import Objective
from tlsweep.records import RecordError, RunRecord, read_run, read_runs, run_order, run_path
from tlsweep.results import load_job
from tlsweep.runs import Runner, RunPlan
from tlsweep.trial import TwoStageTrial

log = logging.getLogger(__name__)

SUPPORTED_KERAS_TUNER = "1.4.8"
CHECKPOINT = "tlsweep.weights.h5"  # a Hyperband trial's weights, in KerasTuner's folder for the trial


class StopSearch(TlsweepError, kt.errors.FatalError):
    """A problem that ends the job's search (KerasTuner goes on after other errors, trial by trial)."""


class SearchStopped(Exception):
    """No more trials start: the job's time budget is spent, or the search ran the trials it may run now
    (raised before KerasTuner creates one). ``why`` says which."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class TrialModel(kt.HyperModel):
    """The trial as KerasTuner sees it: ``build`` declares the searched hyperparameters."""

    def __init__(self, trial: TwoStageTrial) -> None:
        super().__init__(name="transfer")
        self.trial = trial

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return self.trial.build(hp)


class SweepTuner:
    """Mixed in before a KerasTuner tuner: hands each trial to the job's ``Runner``."""

    def __init__(self, *args: Any, runner: Runner, cap: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runner = runner
        self.cap = cap  # the most trials the search runs now (Hyperband's tuner.max_trials; a race's round)

    def pre_create_trial(self) -> None:
        """KerasTuner's hook before it creates each trial: past the budget or the cap, none is. (A worker of a
        distributed search asks its chief for trials: neither applies to it.)"""
        super().pre_create_trial()
        if self.runner.spec.distributed.role == "worker":
            return
        if self.cap is not None and len(self.oracle.trials) >= self.cap:
            raise SearchStopped("cap")
        if self.runner.out_of_time() and self.oracle.trials:
            raise SearchStopped("budget")  # (the first trial always runs, for at least an epoch: a job gives a result)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        """One trial: KerasTuner's own ``run_trial`` would also save the whole model at every better epoch (a run
        keeps its best epoch in memory instead) and clear the Keras session (the classifier is reset, not rebuilt)."""
        values = trial.hyperparameters.values
        continues = values.get("tuner/trial_id")  # Hyperband: a trial continued with a bigger budget
        plan = RunPlan(
            run_id=trial.trial_id,
            label=self._label(trial),
            hyperparameters={k: v for k, v in values.items() if not k.startswith("tuner/")},
            replicate=self.runner.spec.finalists.replicate,
            budget_epochs=values.get("tuner/epochs"),
            initial_epoch=int(values.get("tuner/initial_epoch", 0)),
            continues=continues,
            worker=self.tuner_id,
        )
        checkpoint = Path(self.get_trial_dir(continues)) / CHECKPOINT if continues else None
        keep = Path(self.get_trial_dir(trial.trial_id)) / CHECKPOINT if self.runner.spec.tuner.sizes_itself else None
        try:
            outcome = self.runner.run(plan, trial.hyperparameters, checkpoint, keep)
        except TlsweepError as e:
            raise StopSearch(str(e)) from None
        if outcome.failed:
            raise kt.errors.FailedTrialError(outcome.record.error)
        _closing_line(plan.label, outcome.record, self.runner.best.read(), self.runner.timing())
        return {self.oracle.objective.name: outcome.record.value}

    def _label(self, trial: kt.engine.trial.Trial) -> str:
        """The trial by its record's name, and where it is in the search (KerasTuner numbers trials from 0)."""
        total = self.cap or self.oracle.max_trials
        number = int(trial.trial_id) + 1 if trial.trial_id.isdigit() else None
        return f"trial_{trial.trial_id} ({number} of {total})" if total and number else f"trial_{trial.trial_id}"


def _closing_line(label: str, record: RunRecord, best: dict[str, Any], timing: str) -> None:
    """The line that ends a trial: pruned and why, or its value, where it stopped, and the best so far; then
    how long the job has run and about how long it still takes."""
    pruned = record.stop("pruned")
    if pruned is not None:  # KerasTuner counts it as completed with its best value so far: the oracle learns too
        log.info("%s pruned at epoch %d (%s): %s; %s", label, pruned.epoch, pruned.rule, pruned.why, timing)
        return
    log.info(
        "%s done in %.0fs: %s %.4f at epoch %d%s; best so far %.4f (trial_%s); %s",
        label,
        record.duration_s,
        record.objective,
        record.value,
        record.best_epoch,
        _notes(record),
        best.get("value", float("nan")),
        best.get("trial_id", "?"),
        timing,
    )


def _notes(record: RunRecord) -> str:
    """What a trial's closing line adds: a rolled-back stage 2, and stages stopped early."""
    notes = [", stage 2 rolled back"] if record.rolled_back else []
    for event in record.stopped:
        stage = "stage 1" if event.stage == "head" else "stage 2"
        by = "the budget" if event.by == "budget" else "patience"
        notes.append(f", {stage} stopped by {by} at epoch {event.epoch}")
    return "".join(notes)


class RandomSearch(SweepTuner, kt.RandomSearch):
    """KerasTuner's random search running tlsweep's trials."""


class BayesianOptimization(SweepTuner, kt.BayesianOptimization):
    """KerasTuner's Bayesian optimisation running tlsweep's trials."""


class Hyperband(SweepTuner, kt.Hyperband):
    """KerasTuner's Hyperband running tlsweep's trials; budgets split between the stages."""


class GridSearch(SweepTuner, kt.GridSearch):
    """KerasTuner's grid search running tlsweep's trials."""


TUNERS = {"random": RandomSearch, "bayesian": BayesianOptimization, "hyperband": Hyperband, "grid": GridSearch}
KERAS_TUNERS = {name: tuner.__bases__[1] for name, tuner in TUNERS.items()}  # KerasTuner's own classes


def kt_objective(objective: Objective) -> kt.Objective:
    return kt.Objective(objective.name, "min" if objective.minimise else "max")


def quiet_keras_tuner() -> None:
    """KerasTuner prints the traceback of every failed trial while its ``config.DEBUG`` is on, its default,
    which it offers no public switch for. tlsweep says one line per failed trial and keeps the reason in the
    trial's record (and an unexpected failure's traceback in the job's log): turn KerasTuner's printing off.
    ``tests/test_tuners.py`` fails if KerasTuner moves the switch."""
    from keras_tuner.src import config

    config.DEBUG = False


def make_tuner(runner: Runner, cap: int | None = None) -> kt.Tuner:
    """The tuner the spec names, running the job's trials through ``runner``, keeping its state in
    ``<job>/tuner`` (KerasTuner's own format). ``cap``: at most this many trials for now (a race's round)."""
    spec, job_dir = runner.spec, runner.job_dir
    tuner = spec.tuner
    quiet_keras_tuner()
    kwargs: dict[str, Any] = dict(
        hypermodel=TrialModel(runner.trial),
        objective=kt_objective(spec.objective),
        directory=str(job_dir),
        project_name=files.TUNER_DIR,
        seed=spec.seed + 1,  # KerasTuner takes seed 0 for "no seed" and draws one at random
        max_consecutive_failed_trials=tuner.max_consecutive_failed_trials,
        runner=runner,
        cap=min((c for c in (cap, tuner.max_trials if tuner.sizes_itself else None) if c is not None), default=None),
    )
    if tuner.sizes_itself:
        kwargs.update(
            max_epochs=spec.finetune.total_epochs, factor=tuner.factor, hyperband_iterations=tuner.hyperband_iterations
        )
    else:
        kwargs["max_trials"] = tuner.max_trials
    if tuner.name == "bayesian":
        kwargs["num_initial_points"] = tuner.num_initial_points
    try:  # reloads the state of an interrupted search, if there is one (KerasTuner prints that it does: not shown)
        with contextlib.redirect_stdout(io.StringIO()):
            return TUNERS[tuner.name](**kwargs)
    except ValueError as e:  # KerasTuner's own state files are not written atomically; a kill can cut one
        state = job_dir / files.TUNER_DIR
        raise TlsweepError(
            f"KerasTuner's saved state in {state} is damaged ({type(e).__name__}: {e}); move that folder away "
            "to restart this job's search (the trial records in trials/ are kept)"
        ) from e


class TrainedElsewhere(kt.HyperModel):
    """The stand-in hypermodel of a reloaded job: its trials trained in ``python -m tlsweep``."""

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        raise TlsweepError(
            "a reloaded tlsweep tuner cannot build models; load the job's best model with "
            "keras.saving.load_model(job_dir / 'best.keras'), or run python -m tlsweep to train more trials"
        )


def load_tuner(job_dir: str | Path) -> kt.Tuner:
    """A job's KerasTuner project (``<job>/tuner``), reloaded with the job's tuner and objective.

    KerasTuner needs the objective's direction to rank trials: reloaded without it, its
    ``get_best_hyperparameters()`` silently returns the worst trial. Use the result to inspect
    trials (``results_summary()``, ``oracle.get_best_trials()``); it cannot train new ones.
    """
    job_dir = Path(job_dir)
    project = job_dir / files.TUNER_DIR
    if not (project / "oracle.json").is_file():
        raise TlsweepError(f"{job_dir} holds no KerasTuner project ({project}/oracle.json); give a job folder")
    tuner = load_job(job_dir).config.get("tuner", {})
    name = str(tuner.get("name", "random"))
    budget = {"max_epochs": 1} if name == "hyperband" else {"max_trials": int(tuner.get("max_trials") or 1)}
    return KERAS_TUNERS[name](
        hypermodel=TrainedElsewhere(),
        objective=kt_objective(Objective(str(tuner.get("objective", "val_accuracy")))),
        directory=str(job_dir),
        project_name=files.TUNER_DIR,
        overwrite=False,
        **budget,
    )


def join_search(cfg: DistributedSpec) -> str | None:
    """Set up KerasTuner's distributed mode for ``distributed.role``: the chief serves trials, workers run them.

    KerasTuner reads its settings from the environment: the chief listens on the port of
    ``distributed.chief`` (on every interface); a worker connects to that address.
    """
    role = cfg.role
    if not role:  # an earlier job of this process may have joined a distributed search
        for variable in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
            os.environ.pop(variable, None)
        return None
    host, _, port = cfg.chief.rpartition(":")  # checked with the config: host:port
    os.environ["KERASTUNER_ORACLE_IP"] = "0.0.0.0" if role == "chief" else host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else f"worker-{socket.gethostname()}-{os.getpid()}"
    return str(role)


def run_search(tuner: kt.Tuner) -> str | None:
    """KerasTuner's search; its stop after consecutive failed trials becomes one line naming the last reason.
    Returns why it stopped before its end: ``budget`` (the job's time), ``cap`` (the trials it may run now)."""
    job_dir = Path(tuner.project_dir).parent
    gc.freeze()  # the backbone, images and classifier outlive every trial: spare the collector rescanning them
    try:
        retrain_damaged(tuner)
        tuner.search(verbose=0)
    except SearchStopped as e:
        return e.why
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        raise TlsweepError(  # KerasTuner's message carries the last trial's traceback: the reasons are in the records
            f"{tuner.oracle.max_consecutive_failed_trials} trials in a row failed, so the search stopped; the reasons "
            f"are in {job_dir / files.TRIALS_DIR} and {job_dir / files.LOG_FILE} (last: {_last_failure(job_dir)})"
        ) from None
    finally:
        gc.unfreeze()
    return None


def retrain_damaged(tuner: kt.Tuner) -> None:
    """Train again, from the hyperparameters KerasTuner kept, each search trial it counts as done whose record
    is damaged (a kill or a full disk while it was written, a file edited by hand): the job's ranking, its
    finalists and its model come from the records, so a trial it cannot read is named and run again, never
    left out without a word. A run is seeded by its hyperparameters: it trains as it did the first time."""
    if tuner.runner.spec.distributed.role == "worker":  # the chief's to do, as the search's other trials
        return
    job_dir = tuner.runner.job_dir
    for trial_id, trial in sorted(tuner.oracle.trials.items(), key=lambda item: run_order(item[0])):
        path = run_path(job_dir, trial_id)
        try:
            if read_run(path) is not None:
                continue
            why = f"{path.name} is missing"
        except RecordError as e:
            why = str(e)
        if trial.status != kt.engine.trial.TrialStatus.COMPLETED:
            continue  # a trial cut off is run again by the search itself
        log.warning("%s: training trial_%s again from its hyperparameters", why, trial_id)
        try:
            tuner.run_trial(trial)
        except (kt.errors.FailedTrialError, TlsweepError) as e:
            raise TlsweepError(f"trial_{trial_id}'s record was damaged and training it again failed ({e})") from None


def _last_failure(job_dir: Path) -> str:
    """The error of the job's most recently ended failed run, first line only."""
    failed = [r for r in read_runs(job_dir) if r.status == "failed"]
    last = max(failed, key=lambda r: r.ended or "", default=None)
    return str(last.error or "?").splitlines()[0] if last else "unknown"
