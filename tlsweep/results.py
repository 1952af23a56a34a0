"""What a run or sweep found, read from its records: its jobs, their runs, the ranking and the winner.

Only files are read, never a running process's memory, so this works for a finished sweep, one
still running, one that crashed, a single run, and jobs that ran on other machines. The winner is
decided here, by ``winner``, and nowhere else: the job keeps its model, the export ships it, and
the report and the closing line name it.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tlsweep import files
from tlsweep.objective import Objective
from tlsweep.race import Race
from tlsweep.records import (
    JobRecord,
    RecordError,
    RunRecord,
    read_evaluation,
    read_export,
    read_job,
    read_run,
    run_files,
    run_order,
)

HYDRA_DIR = ".hydra"


@dataclass
class Trial:
    """One run record; ``status`` is what the report shows (``crashed`` where nothing will finish it,
    ``unreadable`` for a damaged record, whose ``error`` names the file)."""

    path: Path
    run: RunRecord
    status: str
    error: str | None = None

    @property
    def trial_id(self) -> str:
        return self.run.trial_id

    @property
    def value(self) -> float | None:
        """The objective at the kept epoch, for a completed run only."""
        return self.run.value if self.status == "completed" else None


@dataclass
class Job:
    """One job folder (one KerasTuner search) and its runs."""

    path: Path
    name: str
    record: JobRecord
    status: str
    error: str | None
    overrides: list[str]
    trials: list[Trial] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config

    @property
    def objective(self) -> Objective:
        return Objective(str(self.config.get("tuner", {}).get("objective", "val_accuracy")))

    @property
    def finalists_top(self) -> int:
        """How many configurations the job's finalists could take (``finalists.top``)."""
        return int((self.config.get("finalists") or {}).get("top") or 0)

    @property
    def classes(self) -> list[str]:
        data = self.record.get("classes") or next((t.run.data.get("classes") for t in self.trials if t.run.data), [])
        return [str(c) for c in data or []]

    @property
    def val_images(self) -> int | None:
        count = self.record.get("val_images") or next(
            (t.run.data.get("val_images") for t in self.trials if t.run.data), None
        )
        return int(count) if count else None

    def find(self, run_id: str) -> Trial | None:
        return next((t for t in self.trials if t.trial_id == run_id), None)


@dataclass
class Sweep:
    """Everything under a sweep folder (or a single run's folder)."""

    root: Path
    jobs: list[Job]
    export: dict[str, Any] | None = None  # best/export.json, when the best model was exported
    evaluation: dict[str, Any] | None = None  # best/evaluation.json, its held-out test
    race: Race | None = None  # race.json, when the race sweeper ran the sweep
    damaged: list[str] = field(default_factory=list)  # the sweep's own files that could not be read, and why

    @property
    def trials(self) -> list[tuple[Job, Trial]]:
        return [(job, trial) for job in self.jobs for trial in job.trials]

    def race_line(self, job: Job) -> str:
        """What the race did with ``job`` (empty outside a race)."""
        entry = next((e for e in self.race.entries if e.name == job.name), None) if self.race else None
        return entry.line(self.race.rounds) if entry and self.race else ""

    @property
    def objective(self) -> Objective:
        """The objective the jobs ranked their runs by; validation accuracy when they differ."""
        objectives = {job.objective for job in self.jobs if job.trials}
        return objectives.pop() if len(objectives) == 1 else Objective("val_accuracy")


def find_job_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (``root`` included) that hold a job: a ``job.json`` or Hydra's ``.hydra/``."""
    found = []
    for current, dirs, names in os.walk(root):
        if Path(current) == Path(root) / files.EXPORT_DIR:
            dirs.clear()
            continue
        if files.JOB_RECORD in names or HYDRA_DIR in dirs:
            found.append(Path(current))
            dirs.clear()  # a job's own sub-folders (trials, tensorboard, tuner) hold no jobs
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def load_sweep(root: Path) -> Sweep:
    """Read every job and run under ``root``."""
    root = Path(root)
    damaged: list[str] = []
    export, evaluation = (_named(read, root / files.EXPORT_DIR, damaged) for read in (read_export, read_evaluation))
    jobs = [load_job(path, root) for path in find_job_dirs(root)]
    return Sweep(root, jobs, export, evaluation, _named(Race.load, root, damaged), damaged)


def _named(read: Any, folder: Path, damaged: list[str]) -> Any:
    """What ``read`` reads in ``folder``; None, with why in ``damaged``, when the file is damaged."""
    try:
        return read(folder)
    except RecordError as e:
        damaged.append(str(e))
        return None


def load_job(path: Path, root: Path | None = None) -> Job:
    """Read one job folder; unreadable or missing files become a status and an error, never an exception."""
    root = Path(root) if root is not None else Path(path)
    name = str(Path(path).relative_to(root)) if Path(path) != root else Path(path).name
    try:
        record = read_job(path)
        error = None if record is None else record.error
    except RecordError as e:
        record, error = None, str(e)
    if record is None:
        status = "unreadable" if error else "not started"  # a damaged job.json says nothing of how the job ended
        error = error or "no job.json: the job stopped before its search began"
        record = JobRecord(job=Path(path).name, status=status)
    else:
        status = record.status
        if status == "running" and not _alive(record):
            status, error = "crashed", "the process running this job is gone (killed or crashed)"
    if not record.config:
        record.config = _hydra_config(Path(path))
    job = Job(Path(path), name, record, status, error, _overrides(Path(path)))
    job.trials = [_load_trial(p, status) for p in run_files(path)]
    return job


def _load_trial(path: Path, job_status: str) -> Trial:
    try:
        run = read_run(path)
    except RecordError as e:
        return Trial(path, RunRecord(path.stem.removeprefix("trial_")), "unreadable", str(e))
    assert run is not None  # the file was just listed
    status, error = run.status, run.error
    if status == "running" and job_status != "running":
        status = "interrupted" if job_status == "interrupted" else "crashed"
        error = f"the job ended ({job_status}) before this trial finished"
    return Trial(path, run, status, error)


def _alive(record: JobRecord) -> bool:
    """Whether the process that wrote a ``running`` record may still run it (unknowable on another host)."""
    if record.host != socket.gethostname() or record.pid is None:
        return True
    return files.process_alive(record.pid)


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):  # a damaged file must not stop the report
        return None


def _overrides(path: Path) -> list[str]:
    """The job's command-line overrides, as Hydra recorded them."""
    overrides = _yaml(path / HYDRA_DIR / "overrides.yaml")
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def _hydra_config(path: Path) -> dict[str, Any]:
    """The job's composed config as Hydra saved it (unresolved), for a job that recorded none."""
    config = _yaml(path / HYDRA_DIR / "config.yaml")
    return config if isinstance(config, dict) else {}


def ranking(sweep: Sweep, objective: Objective) -> list[tuple[Job, Trial, float]]:
    """The completed runs of ``sweep`` that scored, best first (ties: job, then run order)."""
    scored = [(job, t, t.value) for job, t in sweep.trials if t.value is not None]
    return sorted(scored, key=lambda s: rank_key(objective, s[2], s[0].name, s[1].trial_id))  # type: ignore[arg-type]


def rank_key(objective: Objective, value: float, job: str, run_id: str) -> tuple:
    """How runs and configurations are ordered everywhere: best value, then job name, then run order."""
    return (objective.key(value), job, run_order(run_id))


@dataclass
class Group:
    """A configuration's comparable runs (one per seed, the search's first): what its mean is over."""

    job: Job
    name: str  # the search trial the configuration is known by (its finalists' ``finalist_of``)
    runs: list[Trial]
    values: list[float]

    @property
    def trial_id(self) -> str:
        return self.name

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% interval of the mean over seeds (Student's t): where the configuration's mean lies.

        An accuracy moves in steps of one validation image, so seeds often tie; their spread is then
        taken as at least a step's rounding noise (step/√12), never zero: two runs at 0.9983 do not
        make a configuration's mean known to be 0.9983 exactly, nor one image fewer clearly worse."""
        n = len(self.values)
        if n < 2:
            return (self.mean, self.mean)
        from scipy.stats import t

        images = self.job.val_images if self.job.objective.proportion else None
        spread = max(statistics.stdev(self.values), 1 / images / math.sqrt(12) if images else 0.0)
        half = float(t.ppf(0.975, n - 1)) * spread / math.sqrt(n)
        return (self.mean - half, self.mean + half)

    def closest_to_mean(self) -> Trial:
        """The run nearest the mean (the lowest seed of equals): the model that stands for the configuration."""
        pairs = zip(self.runs, self.values, strict=True)
        return min(pairs, key=lambda pair: (abs(pair[1] - self.mean), pair[0].run.replicate))[0]


def finalist_candidates(job: Job, objective: Objective, top: int) -> tuple[list[Trial], list[str]]:
    """The configurations that become finalists: of the search's ``top`` best distinct ones, those within noise
    of its best (``Objective.margin``); and, in words, why each other one is not.

    Seeds decide between configurations noise cannot tell apart; one whose run lies beyond noise below
    the best is already told apart by it, as the ones below the top are, and its seeds (minutes each at
    a deep unfreeze) would be spent on a verdict one run gave. Without a yardstick for one run's noise
    (a loss; validation images unknown), or for a run on a shorter schedule (pruned, a Hyperband budget),
    which does not measure its configuration, every configuration of the top enters, as ranked."""
    seen: set[str] = set()
    ranked: list[Trial] = []
    for _, trial, _ in ranking(Sweep(job.path, [job]), objective):
        if trial.run.is_search and trial.run.configuration not in seen:
            seen.add(trial.run.configuration)
            ranked.append(trial)
    found, left_out = [], []
    images = job.val_images if objective.proportion else None
    for trial in ranked[:top]:
        lead, value = float(ranked[0].value), float(trial.value)  # type: ignore[arg-type]
        margin = objective.margin(value, lead, images)
        measured = images is not None and trial.run.comparable and ranked[0].run.comparable
        if not measured or abs(value - lead) <= margin:
            found.append(trial)
        else:
            left_out.append(
                f"trial_{trial.trial_id} ({value:.4f}) is behind trial_{ranked[0].trial_id} ({lead:.4f}) by more "
                f"than noise (±{margin:.4f} on {images} images)"
            )
    return found, left_out


def finalist_groups(job: Job, objective: Objective) -> list[Group]:
    """The job's finalists: each configuration with comparable runs of more than one seed, best mean first.

    A run counts once per seed; a run the budget cut short, or one trained on a Hyperband epoch
    budget, is left out: every run of a mean trained the same schedule.
    """
    by_configuration: dict[str, list[Trial]] = {}
    for trial in job.trials:
        if trial.status == "completed":
            by_configuration.setdefault(trial.run.configuration, []).append(trial)
    groups = []
    for trials in by_configuration.values():
        finalists = [t.run.finalist_of for t in trials if t.run.finalist_of is not None]
        if not finalists:
            continue
        seeds: dict[int, Trial] = {}
        for trial in trials:
            if trial.run.comparable:
                seeds.setdefault(trial.run.replicate, trial)
        runs = [seeds[r] for r in sorted(seeds)]
        if len(runs) > 1:
            groups.append(Group(job, finalists[0], runs, [float(t.run.value) for t in runs]))  # type: ignore[arg-type]
    return sorted(groups, key=lambda g: rank_key(objective, g.mean, job.name, g.name))


@dataclass(frozen=True)
class Winner:
    """What a run or sweep answers: a configuration, the run that stands for it, and the model that ships.

    ``value`` is the configuration's mean over seeds when finalists ran (``group``), else the best
    run's own value. ``model`` is ``run``, or the configuration retrained on every image
    (``finalists.refit``), which has no validation value of its own.
    """

    job: Job
    run: Trial
    model: Trial
    value: float
    objective: Objective
    group: Group | None = None

    @property
    def name(self) -> str:
        """The configuration, by the search trial it is known by."""
        return f"trial_{self.group.name if self.group else self.run.trial_id}"

    @property
    def interval(self) -> tuple[float, float] | None:
        return self.group.interval if self.group else None

    @property
    def refit(self) -> bool:
        return self.model is not self.run

    def line(self) -> str:
        """The answer in a few words: the configuration, its value (a mean over seeds, with its interval's
        half-width), and the run whose model ships when that is another."""
        value = f"{self.objective.name} {self.value:.4f}"
        if self.group is not None:
            low, high = self.group.interval
            value += f" ± {(high - low) / 2:.4f} over {len(self.group.values)} seeds"
        shipped = f"trial_{self.model.trial_id}"
        model = "" if shipped == self.name else f" (model: {shipped}{', refit on every image' if self.refit else ''})"
        return f"{self.name} {value}{model}"


def winner(sweep: Sweep, objective: Objective | None = None) -> Winner | None:
    """The sweep's answer: the finalist configuration with the best mean of all jobs, as its run closest to
    the mean; without finalists, the best single run. None when no run completed."""
    objective = objective or sweep.objective
    groups = sorted(
        (g for job in sweep.jobs for g in finalist_groups(job, objective)),
        key=lambda g: rank_key(objective, g.mean, g.job.name, g.name),
    )
    if groups:
        top = groups[0]
        run = top.closest_to_mean()
        return Winner(top.job, run, _refit(top.job, run) or run, top.mean, objective, top)
    ranked = [(j, t, v) for j, t, v in ranking(sweep, objective) if t.run.refit_of is None]
    if not ranked:
        return None
    job, run, value = ranked[0]
    return Winner(job, run, _refit(job, run) or run, value, objective)


def _refit(job: Job, run: Trial) -> Trial | None:
    """The refit of ``run`` (finalists.refit): the same configuration, trained on every image for the epochs
    ``run`` kept; only one made from this very run stands for it."""
    return next(
        (t for t in job.trials if t.status == "completed" and t.run.refit_of and t.run.refit_from == run.trial_id),
        None,
    )


def job_winner(job_dir: Path, objective: Objective) -> Winner | None:
    """One job's answer, as ``winner`` decides it."""
    job = load_job(job_dir)
    return winner(Sweep(job.path, [job]), objective)
