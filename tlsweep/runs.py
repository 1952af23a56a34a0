"""One way to run a configuration: seed, build, fit, keep the best epoch, record, map every failure.

A search trial (KerasTuner's), a finalist's extra seed, the winner's retrain and its refit are all
a ``RunPlan`` given to ``Runner.run``: they are seeded, recorded and fail the same way, so they
cannot drift apart. The runner also keeps the job's best model on disk (``BestModel``) and, in
memory, the trained weights of runs that may still become the job's answer, so keeping the winner
rarely needs training again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from tlsweep import files
from tlsweep.batches import Source
from tlsweep.errors import TlsweepError, is_disk_full
from tlsweep.logs import Fitted, TrialLog
from tlsweep.model import Snapshot
from tlsweep.progress import duration
from tlsweep.records import RunRecord, read_runs
from tlsweep.results import Winner, rank_key
from tlsweep.spec import JobSpec
from tlsweep.stopping import Pruner, StopRules
from tlsweep.trial import TrialFailed, TwoStageTrial, seed_keras, trial_seed

log = logging.getLogger(__name__)
tracebacks = logging.getLogger("tlsweep.tracebacks")  # to the job log only (conf/hydra/job_logging)


class Chosen(dict):
    """Hyperparameters already chosen (a finalist's, a retrain's): a trial's declarations get them back."""

    def Float(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  the names KerasTuner's hp uses
        return self[name]

    def Choice(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self[name]

    def Int(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self[name]

    def Fixed(self, name: str, value: Any) -> Any:  # noqa: N802
        return self.setdefault(name, value)


@dataclass(frozen=True)
class RunPlan:
    """One run of a configuration: which run it is, its seed, its schedule, and what it is recorded as."""

    run_id: str
    label: str
    hyperparameters: dict[str, Any]
    replicate: int = 0  # which of the configuration's seeds (0: the search's)
    budget_epochs: int | None = None  # a tuner's epoch budget (Hyperband); None: the full schedule
    initial_epoch: int = 0
    continues: str | None = None  # Hyperband: the trial whose checkpoint this one continues
    finalist_of: str | None = None
    refit_of: str | None = None
    refit_from: str | None = None  # a refit trains as many epochs as this run kept
    refit_epochs: int = 0
    worker: str | None = None

    @property
    def searching(self) -> bool:
        return self.finalist_of is None and self.refit_of is None


@dataclass(frozen=True)
class RunContext:
    """What every run of a job records beside its hyperparameters, and where."""

    job_dir: Path
    logdir: Path  # what ``tensorboard --logdir`` is given: TensorBoard names each run relative to it
    sweep: str  # the run's or sweep's folder, as TensorBoard shows it
    choices: dict[str, str]
    settings: dict[str, Any]
    data: dict[str, Any]  # classes, images per split and class


@dataclass
class Outcome:
    """A run's record once it ended, and its model at the kept epoch (None when it failed)."""

    record: RunRecord
    model: keras.Model | None = None

    @property
    def failed(self) -> bool:
        return self.record.status == "failed"


class BestModel:
    """The job's best model on disk — ``best.keras``, ``best.json``, ``labels.txt`` — and the one place that
    saves it. During the search it holds the best single run (the processes of a distributed search share
    it through a file lock); once finalists are done, the job's answer (``keep``).
    ``best.keras`` carries the job, run and classes it holds (``files.model_origin``)."""

    def __init__(self, job_dir: Path, spec: JobSpec, classes: list[str]) -> None:
        self.job_dir, self.objective, self.classes = Path(job_dir), spec.objective, list(classes)

    def read(self) -> dict[str, Any]:
        """Which run ``best.keras`` holds (trial id, value, hyperparameters); empty when there is none yet."""
        path, model = self.job_dir / files.BEST_RECORD, self.job_dir / files.BEST_MODEL
        if not path.is_file() or not model.is_file() or files.damaged_model(model):  # damaged: the job has none
            return {}
        try:
            best = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return best if isinstance(best, dict) else {}

    def offer(self, record: RunRecord, model: keras.Model) -> dict[str, Any]:
        """Save ``model`` (a search run's, at its kept epoch) if it ranks above the best so far, as the
        records rank runs (``tlsweep.results.rank_key``); returns the best."""
        value = record.value
        with files.locked(self.job_dir / ".best.lock"):
            best = self.read()  # another process may have saved a better run meanwhile
            if value is not None and (not best or best.get("value") is None or self._ahead(value, record, best)):
                best = self._save(record.trial_id, record.hyperparameters, model, value=value)
        return best

    def _ahead(self, value: float, record: RunRecord, best: dict[str, Any]) -> bool:
        mine = rank_key(self.objective, value, "", record.trial_id)
        return mine < rank_key(self.objective, float(best["value"]), "", str(best.get("trial_id")))

    def keep(self, winner: Winner, model: keras.Model | None) -> dict[str, Any]:
        """Save the job's answer: ``winner.model``'s model (None: ``best.keras`` holds it already), with the
        value that answers (a mean over seeds)."""
        extra: dict[str, Any] = {"value": winner.value, "run": winner.run.trial_id}
        if winner.group is not None:
            low, high = winner.group.interval
            extra.update(mean=winner.group.mean, interval=[low, high], runs=len(winner.group.values))
        if winner.refit:
            extra["refit_of"] = winner.model.run.refit_of
        with files.locked(self.job_dir / ".best.lock"):
            return self._save(winner.model.trial_id, winner.model.run.hyperparameters, model, **extra)

    def _save(
        self, run_id: str, hyperparameters: dict[str, Any], model: keras.Model | None, **extra: Any
    ) -> dict[str, Any]:
        if model is not None:
            origin = {"job": self.job_dir.name, "trial_id": run_id, "classes": self.classes}
            files.save_model(model, self.job_dir / files.BEST_MODEL, origin)
            files.write_text(self.job_dir / files.LABELS, "\n".join(self.classes) + "\n")
        best = {"trial_id": run_id, "hyperparameters": hyperparameters, **extra}
        files.write_json(self.job_dir / files.BEST_RECORD, best)
        return best


def _tag(record: RunRecord) -> dict[str, Any]:
    """What identifies a run's kept weights: a record trained again (another seed, epoch or value) is another run."""
    return {"trial_id": record.trial_id, "seed": record.seed, "best_epoch": record.best_epoch, "value": record.value}


@dataclass
class Runner:
    """Runs the configurations of one job, each the same way (``run``), and keeps what may win."""

    spec: JobSpec
    trial: TwoStageTrial
    context: RunContext
    best: BestModel
    pruner: Pruner | None = None
    deadline: float | None = None  # time.monotonic() after which no run starts and a running one stops (budget)
    refit_data: Callable[[], Source] | None = None  # training + validation images, for a refit
    kept: dict[str, tuple[RunRecord, Snapshot]] = field(default_factory=dict)  # weights of runs that may still win
    started: float = field(default_factory=time.monotonic)
    _refit_source: Source | None = None

    @property
    def job_dir(self) -> Path:
        return self.context.job_dir

    def out_of_time(self) -> bool:
        return StopRules(deadline=self.deadline).spent()

    def run(
        self, plan: RunPlan, hp: Any = None, checkpoint: Path | None = None, save_to: Path | None = None
    ) -> Outcome:
        """Train ``plan`` and record it; ``hp`` is KerasTuner's (a search trial), else the plan's values.
        ``checkpoint``: weights to start from (Hyperband continues a trial); ``save_to``: where to save the
        kept weights. A run that fails is recorded as failed, with one line saying why, and the job goes
        on; a full disk stops the job (TlsweepError), keeping what is written."""
        values = dict(plan.hyperparameters)
        seed = trial_seed(self.spec.seed, values, plan.replicate)
        record = self._record(plan, values, seed)
        trial_log = TrialLog(self.job_dir, record, plan.label, self.spec.verbose, self.context.logdir)
        hp = hp if hp is not None else Chosen(values)
        try:
            trial_log.start()
            model = self._build(hp, seed, checkpoint)
            fitted = self._fit(plan, hp, model, trial_log, seed)
            trial_log.finish(fitted)
            if plan.searching and fitted.stop("pruned") is None:  # a pruned run never becomes the job's best
                self.best.offer(record, model)
            if save_to is not None:
                model.save_weights(save_to)
            trial_log.complete()  # after the model is saved: a model that could not be saved fails its run
        except Exception as e:
            trial_log.fail(self._failure(e, trial_log, trial_log.label))
            return Outcome(record)
        if record.status == "completed" and (plan.refit_of or self.spec.finalists.enabled):
            self._keep(record)
        return Outcome(record, model)

    def _keep(self, record: RunRecord) -> None:
        """Hold the run's weights while it may still win: in memory, and on disk for a resumed job (or a race's
        next round), which then need not train it again."""
        snapshot = self.trial.classifier.snapshot()
        self.kept[record.trial_id] = (record, snapshot)
        self._trim()
        if record.trial_id not in self.kept:  # it cannot win: nothing to write
            return
        try:
            snapshot.save(self._kept_file(record.trial_id), _tag(record))
        except OSError as e:
            why = f"trial_{record.trial_id}'s weights are not kept on disk ({e}): a resumed job trains it again"
            log.warning(why)

    def _kept_file(self, run_id: str) -> Path:
        return self.job_dir / files.KEPT_DIR / f"trial_{run_id}.npz"

    def recover(self) -> None:
        """Hold again the weights an earlier process of this job kept on disk, of the runs recorded as they were."""
        folder = self.job_dir / files.KEPT_DIR
        runs = {r.trial_id: r for r in read_runs(self.job_dir)} if folder.is_dir() else {}
        for path in sorted(folder.glob(self._kept_file("*").name)) if runs else []:
            record = runs.get(path.stem.removeprefix("trial_"))
            snapshot = Snapshot.load(path, _tag(record)) if record else None
            if record is None or snapshot is None:
                path.unlink(missing_ok=True)  # another run's, or damaged: training again is the way
            else:
                self.kept[record.trial_id] = (record, snapshot)

    def timing(self, planned: dict[str, Any] | None = None) -> str:
        """How long the job has run, and about how long its runs still take (``time_left``; ``planned``: the
        later runs by id and unfreeze depth, once known)."""
        budget_left = self.deadline - time.monotonic() if self.deadline is not None else None
        left = time_left(self.spec, read_runs(self.job_dir), planned, budget_left)
        so_far = f"{duration(time.monotonic() - self.started)} so far"
        return so_far + (f", about {duration(left)} left" if left else "")

    def _trim(self) -> None:
        """Keep the weights of every finalist run, and of the search's runs of the ``finalists.top`` best
        configurations so far: only those can become the job's answer."""
        search = [r for r, _ in self.kept.values() if r.is_search and r.value is not None]
        search.sort(key=lambda r: rank_key(self.spec.objective, float(r.value), "", r.trial_id))  # type: ignore[arg-type]
        top: dict[str, str] = {}
        for record in search:
            if len(top) < self.spec.finalists.top or record.configuration in top:
                top.setdefault(record.configuration, record.trial_id)
        keep = set(top.values()) | {r.trial_id for r, _ in self.kept.values() if not r.is_search}
        self.settle(keep)

    def refit_source(self) -> Source:
        """The training and validation images together, as a source (made once)."""
        if self._refit_source is None:
            if self.refit_data is None:
                raise TlsweepError("finalists.refit needs the job's images, which this process did not load")
            self._refit_source = self.refit_data()
        return self._refit_source

    def _record(self, plan: RunPlan, values: dict[str, Any], seed: int) -> RunRecord:
        """The run's record as it starts; a budget that is the full schedule from scratch is no budget."""
        context = self.context
        budget = plan.budget_epochs
        if budget == self.spec.finetune.total_epochs and plan.initial_epoch == 0 and plan.continues is None:
            budget = None
        return RunRecord(
            trial_id=plan.run_id,
            hyperparameters=values,
            objective=self.spec.objective.name,
            seed=seed,
            replicate=plan.replicate,
            finalist_of=plan.finalist_of,
            refit_of=plan.refit_of,
            refit_from=plan.refit_from,
            budget_epochs=budget,
            initial_epoch=plan.initial_epoch,
            continues=plan.continues,
            train_images=len(self.refit_source().train.labels) if plan.refit_of else None,
            sweep=context.sweep,
            choices=context.choices,
            settings=context.settings,
            data=context.data,
            worker=plan.worker,
        )

    def _build(self, hp: Any, seed: int, checkpoint: Path | None) -> keras.Model:
        seed_keras(seed)  # before the model is reset: its initial weights, its dropout
        model = self.trial.build(hp)
        if checkpoint is not None:
            model.load_weights(checkpoint)
        return model

    def _fit(
        self, plan: RunPlan, hp: Any, model: keras.Model, trial_log: TrialLog | None, seed: int, again: bool = False
    ) -> Fitted:
        """Train ``plan``'s run; ``again``: as it was recorded, so neither pruning (its peers changed since)
        nor the budget may stop it (the runs that can win were neither pruned nor cut short)."""
        if plan.refit_of is not None:
            return self.trial.refit(hp, model, self.refit_source(), plan.refit_epochs, trial_log, seed)
        rules = StopRules() if again else StopRules(
            self.pruner if plan.searching else None, self.deadline, self.job_dir, plan.run_id
        )  # fmt: skip
        return self.trial.fit(hp, model, trial_log, seed, plan.budget_epochs, plan.initial_epoch, rules)

    def _failure(self, error: Exception, trial_log: TrialLog | None, label: str) -> str:
        """Why a run failed, in one line; a full disk stops the job instead (every later run would fail too)."""
        if is_disk_full(error):
            with contextlib.suppress(OSError):  # the record may not fit on the disk either
                if trial_log is not None:
                    trial_log.fail(f"{type(error).__name__}: {error}")
            raise TlsweepError(
                f"the disk is full ({getattr(error, 'filename', None) or self.job_dir}); finished runs are "
                "kept: free some space, then continue with resume=true"
            ) from error
        if _out_of_memory(error):
            return "out of memory; lower finetune.batch_size or dataset.image_size, or unfreeze fewer layers"
        if isinstance(error, TrialFailed):
            return str(error)
        tracebacks.exception("%s failed", label)  # not the user's doing: the whole story, in the log
        return f"{type(error).__name__}: {error}".strip()

    def settle(self, kept_ids: set[str]) -> None:
        """Let go of the kept weights of every run but ``kept_ids``: they can no longer win."""
        for run_id in [r for r in self.kept if r not in kept_ids]:
            del self.kept[run_id]
            self._kept_file(run_id).unlink(missing_ok=True)
        if not self.kept:
            with contextlib.suppress(OSError):
                (self.job_dir / files.KEPT_DIR).rmdir()

    def model_of(self, record: RunRecord) -> keras.Model:
        """The model of a recorded run at its kept epoch: from the weights kept in memory, else trained again
        exactly as recorded (same seed, schedule and data), and checked against its record."""
        if record.trial_id in self.kept:
            return self.trial.classifier.restore(self.kept[record.trial_id][1])
        log.info("training trial_%s again: this process did not keep its weights (a resumed job)", record.trial_id)
        plan = RunPlan(
            record.trial_id, "", record.hyperparameters, record.replicate,
            record.budget_epochs, record.initial_epoch, record.continues, record.finalist_of,
            record.refit_of, record.refit_from, record.best_epoch or 0,
        )  # fmt: skip
        if record.continues is not None:
            raise TlsweepError(f"trial_{record.trial_id} continued another trial's checkpoint and cannot be retrained")
        try:  # failures map as a run's do: its model is the job's answer, so the job stops, in one line
            model = self._build(Chosen(record.hyperparameters), int(record.seed or 0), None)
            fitted = self._fit(plan, Chosen(record.hyperparameters), model, None, int(record.seed or 0), again=True)
        except TlsweepError:
            raise
        except Exception as e:
            why = self._failure(e, None, f"trial_{record.trial_id} (trained again)")
            raise TlsweepError(f"trial_{record.trial_id} could not be trained again ({why}); resume to retry") from e
        if (fitted.best_epoch, fitted.value) != (record.best_epoch, record.value):
            raise TlsweepError(
                f"trial_{record.trial_id} trained again kept epoch {fitted.best_epoch} ({fitted.value}), not epoch "
                f"{record.best_epoch} ({record.value}) as recorded; its data or settings changed since it ran, so "
                "its model cannot be rebuilt: start a new run"
            )
        return model


def time_left(
    spec: JobSpec, runs: list[RunRecord], planned: dict[str, Any] | None = None, budget_left: float | None = None
) -> float | None:
    """Seconds the job's remaining runs should take, each at the median seconds its stages' epochs took so far
    (stage 2 at each unfreeze depth on its own: a deep unfreeze costs far more); every run counted in full
    (pruning and the budget only shorten it). ``planned``: the later runs known by id and unfreeze depth (the
    finalists once chosen), else as many as the spec allows at an average depth; never more than the time
    budget leaves (``budget_left`` seconds). None until an epoch of each stage has been timed."""
    seconds: dict[tuple[str, Any], list[float]] = {}
    for run in runs:
        depth = run.depth
        for epoch in run.history:
            if epoch.seconds is not None:
                seconds.setdefault((epoch.stage, None if epoch.stage == "head" else depth), []).append(epoch.seconds)
    per_epoch = {key: statistics.median(values) for key, values in seconds.items()}
    stage2 = [v for (stage, _), v in per_epoch.items() if stage == "finetune"]
    if ("head", None) not in per_epoch or (spec.finetune.stage2_epochs and not stage2):
        return None
    searched = list(spec.depths(0)) if spec.finetune.mode == "top" else []
    average = statistics.fmean([per_epoch.get(("finetune", d), max(stage2, default=0.0)) for d in searched or [None]])

    def run_seconds(depth: Any = None) -> float:
        finetune = per_epoch.get(("finetune", depth), average) if depth is not None else average
        return spec.finetune.head_epochs * per_epoch[("head", None)] + spec.finetune.stage2_epochs * (
            finetune if stage2 else 0.0
        )

    planned_trials = spec.trials_now() or spec.search_trials()
    searched = sum(1 for r in runs if r.is_search and r.status != "running")
    if planned is not None:
        finished = {r.trial_id for r in runs if r.status != "running"}
        later = sum(run_seconds(depth) for run_id, depth in planned.items() if run_id not in finished)
    else:
        count = spec.workload().later_runs if spec.trials_now() is None else 0
        later = max(count - sum(1 for r in runs if not r.is_search and r.status != "running"), 0) * run_seconds()
    left = max(planned_trials - searched, 0) * run_seconds() + later
    return left if budget_left is None else min(left, max(budget_left, 0.0))


def _out_of_memory(error: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError))
