"""KerasTuner, and only here: its tuners run tlsweep's two-stage trials and keep their state.

KerasTuner chooses each trial's hyperparameters (random, Bayesian, Hyperband, grid), keeps its
project in ``<job>/tuner`` (so a killed search resumes), and, in distributed mode, hands trials
to workers. ``SweepTuner.run_trial`` runs a trial itself: it seeds it, builds and fits the
``TwoStageTrial``, offers its model to the job's ``BestModel`` and records it. This module supports
keras-tuner 1.4.8, the version ``pyproject.toml`` pins (``tests/test_tuners.py`` checks it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
from omegaconf import DictConfig, OmegaConf

from tlsweep import files
from tlsweep.errors import TlsweepError, is_disk_full
from tlsweep.logs import BestModel, TrialLog
from tlsweep.settings import Objective
from tlsweep.stopping import Pruner, StopRules
from tlsweep.trial import TrialFailed, TwoStageTrial, seed_keras, trial_seed

log = logging.getLogger(__name__)

SUPPORTED_KERAS_TUNER = "1.4.8"
CHECKPOINT = "tlsweep.weights.h5"  # a Hyperband trial's weights, in KerasTuner's folder for the trial


@dataclass
class JobContext:
    """What every trial of a job shares: where it writes, and what to record beside the hyperparameters."""

    job_dir: Path
    logdir: Path  # what ``tensorboard --logdir`` is given: TensorBoard names each trial's run relative to it
    sweep: str  # the run's or sweep's folder, as TensorBoard shows it
    choices: dict[str, str]
    settings: dict[str, Any]
    data: dict[str, Any]  # classes, train_images, val_images
    best: BestModel
    verbose: bool = True
    seed: int = 0
    replicate: int = 0  # which seed of each configuration the search's trials run (finalists.replicate)
    pruner: Pruner | None = None  # pruning=median | asha
    deadline: float | None = None  # time.monotonic() after which no trial starts and a running one stops (budget)

    def recorded(self, objective: str, worker: str | None = None) -> dict[str, Any]:
        """What each trial's record holds beside its hyperparameters and history."""
        return {
            "sweep": self.sweep,
            "choices": self.choices,
            "settings": self.settings,
            "objective": objective,
            "data": self.data,
            "worker": worker,
        }


class StopSearch(TlsweepError, kt.errors.FatalError):
    """A problem that ends the job's search (KerasTuner goes on after other errors, trial by trial)."""


class BudgetSpent(Exception):
    """The job's time budget is spent: no trial starts (raised before KerasTuner creates one)."""


class TrialModel(kt.HyperModel):
    """The trial as KerasTuner sees it: ``build`` declares the searched hyperparameters."""

    def __init__(self, trial: TwoStageTrial) -> None:
        super().__init__(name="transfer")
        self.trial = trial

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return self.trial.build(hp)


def _out_of_memory(error: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError))


class SweepTuner:
    """Mixed in before a KerasTuner tuner: runs each trial (seeded, logged, its model offered as the best)."""

    def __init__(self, *args: Any, job: JobContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job

    def pre_create_trial(self) -> None:
        """KerasTuner's hook before it creates each trial: once the budget is spent, none is."""
        super().pre_create_trial()
        if self.job.deadline is not None and time.monotonic() >= self.job.deadline and self.oracle.trials:
            raise BudgetSpent()  # (the first trial always runs, for at least an epoch: a job gives a result)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        """One trial, start to record. KerasTuner's own ``run_trial`` would also save the whole model at
        every better epoch (a trial keeps its best epoch in memory instead) and clear the Keras session
        first (the job's classifier is reset, not rebuilt)."""
        hp = trial.hyperparameters
        values = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
        trial_log = TrialLog(
            self.job.job_dir,
            trial.trial_id,
            self._label(trial),
            values,
            self.job.recorded(self.oracle.objective.name, self.tuner_id),
            self.job.verbose,
            self.job.logdir,
        )
        seed = trial_seed(self.job.seed, values, self.job.replicate)
        trial_log.record["seed"] = seed
        seed_keras(seed)  # before the model is reset: its initial weights, its dropout
        try:
            trial_log.start()
            summary, model = self._fit(trial, trial_log, seed)
            trial_log.finish(summary)
            pruned = next((e for e in summary["stopped"] if e["by"] == "pruned"), None)
            if not pruned:  # a pruned trial never becomes the job's best
                best = self.job.best.offer(trial_log.record, model)
            trial_log.complete()  # after the model is saved: a model that could not be saved fails its trial
        except Exception as e:
            raise self._failed(e, trial_log) from None
        objective = self.oracle.objective.name
        if pruned:  # KerasTuner counts it as completed with its best value so far: the oracle learns from it too
            log.info("%s pruned at epoch %d (%s): %s", trial_log.label, pruned["epoch"], pruned["rule"], pruned["why"])
            return {objective: summary[objective]}
        log.info(
            "%s done in %.0fs: %s %.4f at epoch %d%s; best so far %.4f (trial_%s)",
            trial_log.label,
            trial_log.record["duration_s"],
            objective,
            summary[objective],
            summary["best_epoch"],
            _notes(summary),
            best["value"],
            best["trial_id"],
        )
        return {objective: summary[objective]}

    def _fit(self, trial: kt.engine.trial.Trial, trial_log: TrialLog, seed: int) -> tuple[dict[str, Any], keras.Model]:
        """Build and fit the trial (its summary, and its model at its best epoch); under Hyperband, continue
        from the trial it extends and checkpoint it."""
        hp = trial.hyperparameters
        model = self.hypermodel.build(hp)
        extends = hp.values.get("tuner/trial_id")  # Hyperband: a trial continued with a bigger budget
        if extends:
            model.load_weights(Path(self.get_trial_dir(extends)) / CHECKPOINT)
        summary = self.hypermodel.trial.fit(
            hp,
            model,
            trial_log=trial_log,
            seed=seed,
            epochs=hp.values.get("tuner/epochs"),
            initial_epoch=int(hp.values.get("tuner/initial_epoch", 0)),
            rules=StopRules(self.job.pruner, self.job.deadline, self.job.job_dir, trial.trial_id),
        )
        if self.hypermodel.trial.settings.keep_checkpoints:  # only Hyperband reads them
            model.save_weights(Path(self.get_trial_dir(trial.trial_id)) / CHECKPOINT)
        return summary, model

    def _failed(self, error: Exception, trial_log: TrialLog) -> Exception:
        """The error KerasTuner should see for a trial that failed, once its record says why."""
        if is_disk_full(error):  # every later trial would fail the same way: stop the job, keep what is written
            with contextlib.suppress(OSError):  # the record may not fit on the disk either
                trial_log.fail(error)
            return StopSearch(
                f"the disk is full ({getattr(error, 'filename', None) or self.job.job_dir}); finished trials are "
                "kept: free some space, then continue with resume=true"
            )
        if isinstance(error, kt.errors.FatalError):
            return error
        if _out_of_memory(error):
            error = TrialFailed(
                "out of memory; lower dataset.batch_size or dataset.image_size, or unfreeze fewer layers"
            )
        trial_log.fail(error)
        return kt.errors.FailedTrialError(str(error)) if isinstance(error, TrialFailed) else error

    def _label(self, trial: kt.engine.trial.Trial) -> str:
        number = int(trial.trial_id) + 1 if trial.trial_id.isdigit() else len(self.oracle.trials)
        total = self.oracle.max_trials
        return f"trial {number}/{total}" if total else f"trial {number}"


def _notes(summary: dict[str, Any]) -> str:
    """What a trial's closing line adds: a rolled-back stage 2, and stages stopped early."""
    notes = [", stage 2 rolled back"] if summary["rolled_back"] else []
    for event in summary["stopped"]:
        stage = "stage 1" if event["stage"] == "head" else "stage 2"
        by = "the budget" if event["by"] == "budget" else "patience"
        notes.append(f", {stage} stopped by {by} at epoch {event['epoch']}")
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


def make_tuner(tuner: Any, trial: TwoStageTrial, job: JobContext, seed: int) -> kt.Tuner:
    """The tuner the ``tuner`` config names, keeping its state in ``<job>/tuner`` (KerasTuner's own format)."""
    kwargs: dict[str, Any] = dict(
        hypermodel=TrialModel(trial),
        objective=kt_objective(trial.settings.objective),
        directory=str(job.job_dir),
        project_name=files.TUNER_DIR,
        seed=seed + 1,  # KerasTuner takes seed 0 for "no seed" and draws one at random
        max_consecutive_failed_trials=int(tuner.max_consecutive_failed_trials),
        job=job,
    )
    if tuner.name == "hyperband":
        kwargs.update(
            max_epochs=trial.settings.head_epochs + trial.settings.finetune_epochs,
            factor=int(tuner.factor),
            hyperband_iterations=int(tuner.hyperband_iterations),
        )
    else:
        kwargs["max_trials"] = int(tuner.max_trials)
    if tuner.name == "bayesian":
        kwargs["num_initial_points"] = int(tuner.num_initial_points)
    try:
        return TUNERS[tuner.name](**kwargs)  # reloads the state of an interrupted search, if there is one
    except ValueError as e:  # KerasTuner's own state files are not written atomically; a kill can cut one
        state = job.job_dir / files.TUNER_DIR
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
    tuner = _job_config(job_dir).get("tuner", {})
    name = str(tuner.get("name", "random"))
    budget = {"max_epochs": 1} if name == "hyperband" else {"max_trials": int(tuner.get("max_trials", 1))}
    return KERAS_TUNERS[name](
        hypermodel=TrainedElsewhere(),
        objective=kt_objective(Objective(str(tuner.get("objective", "val_accuracy")))),
        directory=str(job_dir),
        project_name=files.TUNER_DIR,
        overwrite=False,
        **budget,
    )


def _job_config(job_dir: Path) -> dict[str, Any]:
    """The job's config as it ran: from ``job.json``, else the one Hydra saved when it started."""
    try:
        record = json.loads((job_dir / files.JOB_RECORD).read_text(encoding="utf-8"))
        if isinstance(record.get("config"), dict):
            return record["config"]
    except (OSError, ValueError):
        pass
    saved = job_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else {}  # type: ignore[return-value]


def join_search(cfg: DictConfig) -> str | None:
    """Set up KerasTuner's distributed mode for ``distributed.role``: the chief serves trials, workers run them.

    KerasTuner reads its settings from the environment: the chief listens on the port of
    ``distributed.chief`` (on every interface); a worker connects to that address.
    """
    role = cfg.role
    if not role:  # an earlier job of this process may have joined a distributed search
        for variable in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
            os.environ.pop(variable, None)
        return None
    host, _, port = str(cfg.chief).rpartition(":")  # checked with the config: host:port
    os.environ["KERASTUNER_ORACLE_IP"] = "0.0.0.0" if role == "chief" else host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else f"worker-{socket.gethostname()}-{os.getpid()}"
    return str(role)
