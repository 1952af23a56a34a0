"""The records of a run or sweep, read from disk: its jobs, every trial in them, and their ranking.

Only files are read, never the memory of a running process, so this works for a finished sweep,
one still running, one that crashed, a single run, and jobs that ran on other machines. The
export and the report rank trials the same way, here (``ranking``), and rerun one the same way
(``reproduce_command``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tlsweep import files
from tlsweep.config import split_override
from tlsweep.settings import minimised

HYDRA_DIR = ".hydra"


@dataclass
class Trial:
    """One trial record; ``status`` is what the report shows (``crashed`` where nothing will finish it)."""

    path: Path
    record: dict[str, Any]
    status: str
    error: str | None = None

    @property
    def trial_id(self) -> str:
        return str(self.record.get("trial_id", self.path.stem.removeprefix("trial_")))

    @property
    def history(self) -> list[dict[str, Any]]:
        history = self.record.get("history")
        return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []


@dataclass
class Job:
    """One job folder (one KerasTuner search) and its trials."""

    path: Path
    name: str
    record: dict[str, Any]
    status: str
    error: str | None
    overrides: list[str]
    config: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)

    @property
    def objective(self) -> str:
        return str(self.config.get("tuner", {}).get("objective", "val_accuracy"))

    @property
    def classes(self) -> list[str]:
        data = self.record.get("classes") or next((t.record["data"]["classes"] for t in self._with_data()), [])
        return [str(c) for c in data]

    @property
    def val_images(self) -> int | None:
        count = self.record.get("val_images") or next((t.record["data"]["val_images"] for t in self._with_data()), None)
        return int(count) if count else None

    def _with_data(self) -> list[Trial]:
        return [t for t in self.trials if isinstance(t.record.get("data"), dict)]


@dataclass
class Sweep:
    """Everything under a sweep folder (or a single run's folder)."""

    root: Path
    jobs: list[Job]
    export: dict[str, Any] | None = None  # best/export.json, when the best model was exported
    evaluation: dict[str, Any] | None = None  # best/evaluation.json, its held-out test

    @property
    def trials(self) -> list[tuple[Job, Trial]]:
        return [(job, trial) for job in self.jobs for trial in job.trials]


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
    """Read every job and trial under ``root``."""
    root = Path(root)
    export, _ = read_json(root / files.EXPORT_DIR / files.EXPORT_RECORD)
    evaluation, _ = read_json(root / files.EXPORT_DIR / files.EVALUATION)
    return Sweep(root, [load_job(path, root) for path in find_job_dirs(root)], export, evaluation)


def load_job(path: Path, root: Path) -> Job:
    """Read one job folder; unreadable or missing files become a status and an error, never an exception."""
    name = str(path.relative_to(root)) if path != root else path.name
    record, error = read_json(path / files.JOB_RECORD)
    if record is None:
        status = "crashed" if error else "not started"
        error = error or "no job.json: the job stopped before its search began"
        record = {}
    else:
        status = str(record.get("status", "running"))
        error = record.get("error")
        if status == "running" and not _alive(record):
            status, error = "crashed", "the process running this job is gone (killed or crashed)"
    job = Job(path, name, record, status, error, _overrides(path), _config(path, record))
    for trial_path in sorted((path / files.TRIALS_DIR).glob("trial_*.json"), key=_trial_order):
        job.trials.append(_load_trial(trial_path, status))
    return job


def _load_trial(path: Path, job_status: str) -> Trial:
    record, error = read_json(path)
    if record is None:
        return Trial(path, {}, "unreadable", error)
    status = str(record.get("status", "running"))
    if status == "running" and job_status != "running":
        status = "interrupted" if job_status == "interrupted" else "crashed"
        error = f"the job ended ({job_status}) before this trial finished"
    return Trial(path, record, status, record.get("error", error))


def read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in ``path``; ``(None, None)`` if there is no file, ``(None, why)`` if it is unreadable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process that wrote a ``running`` record may still run it (unknowable on another host)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    return files.process_alive(pid)


def _overrides(path: Path) -> list[str]:
    """The job's command-line overrides, as Hydra recorded them."""
    overrides_file = path / HYDRA_DIR / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    except Exception:  # a damaged file must not stop the report
        return []


def _config(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The job's composed config: from ``job.json`` when it finished, else Hydra's unresolved copy."""
    if isinstance(record.get("config"), dict):
        return record["config"]
    config_file = path / HYDRA_DIR / "config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False) if config_file.is_file() else {}
    except Exception:  # a damaged file must not stop the report
        return {}
    return config if isinstance(config, dict) else {}


def _trial_order(path: Path) -> tuple[int, str]:
    number = path.stem.removeprefix("trial_")
    return (int(number), "") if number.isdigit() else (1 << 30, number)


def kept_epoch(trial: Trial, objective: str) -> dict[str, Any]:
    """The epoch a trial's numbers come from: its kept (best) epoch when it completed, else its best so far."""
    if trial.status == "completed":
        return next((e for e in trial.history if e.get("epoch") == trial.record.get("best_epoch")), {})
    return best_entry(trial.history, objective)


def best_entry(history: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The epoch of ``history`` with the best ``objective``; empty when none has scored."""
    scored = [e for e in history if isinstance(e.get(objective), (int, float))]
    if not scored:
        return {}
    return (min if minimised(objective) else max)(scored, key=lambda e: e[objective])


def ranking(sweep: Sweep, objective: str) -> list[tuple[Job, Trial, float]]:
    """The completed trials of ``sweep`` that scored, best first by ``objective`` (ties: job, then trial number)."""
    scored = []
    for job, trial in sweep.trials:
        value = kept_epoch(trial, objective).get(objective) if trial.status == "completed" else None
        if isinstance(value, (int, float)):
            scored.append((job, trial, float(value)))
    return sorted(scored, key=lambda s: _rank_key(s[2], objective, s[0], s[1]))


def sweep_objective(sweep: Sweep) -> str:
    """The objective the jobs ranked their trials by; validation accuracy when they differ."""
    objectives = {job.objective for job in sweep.jobs if job.trials}
    return objectives.pop() if len(objectives) == 1 else "val_accuracy"


@dataclass
class Group:
    """A configuration's runs: its search trial, then the finalist runs of it with other seeds."""

    job: Job
    runs: list[Trial]
    values: list[float]

    @property
    def trial_id(self) -> str:
        """The search trial the configuration was first tried in."""
        return self.runs[0].trial_id

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% interval of the mean over seeds (Student's t): where the configuration's mean lies."""
        n = len(self.values)
        if n < 2:
            return (self.mean, self.mean)
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * statistics.stdev(self.values) / math.sqrt(n)
        return (self.mean - half, self.mean + half)

    def closest_to_mean(self) -> Trial:
        """The run nearest the mean (the earliest such): the model that stands for the configuration."""
        nearest = min(range(len(self.runs)), key=lambda i: (abs(self.values[i] - self.mean), i))
        return self.runs[nearest]


def budget_stop(record: dict[str, Any]) -> int | None:
    """The epoch at which the job's time budget stopped a run, as its record says; None if it did not."""
    return next((int(stop["epoch"]) for stop in record.get("stopped") or [] if stop.get("by") == "budget"), None)


def finalist_groups(job: Job, objective: str) -> list[Group]:
    """The job's finalists: each configuration that ran with more than one seed, best mean first.

    A finalist run the budget cut short trained fewer epochs than its search trial: it is left out."""
    scores = {t.trial_id: kept_epoch(t, objective).get(objective) for t in job.trials if t.status == "completed"}
    scored = [t for t in job.trials if isinstance(scores.get(t.trial_id), (int, float))]
    groups = []
    for trial in scored:
        if trial.record.get("finalist_of") is None:
            seeds = [t for t in scored if str(t.record.get("finalist_of")) == trial.trial_id]
            runs = [trial, *(t for t in seeds if budget_stop(t.record) is None)]
            if len(runs) > 1:
                groups.append(Group(job, runs, [float(scores[t.trial_id]) for t in runs]))
    return sorted(groups, key=lambda g: _rank_key(g.mean, objective, g.job, g.runs[0]))


def winner(sweep: Sweep, objective: str) -> tuple[Job, Trial, Group | None] | None:
    """What a sweep answers: the finalist configuration with the best mean of all jobs, as its run
    closest to the mean; without finalists, the best single trial. None when no trial completed."""
    groups = sorted(
        (g for job in sweep.jobs for g in finalist_groups(job, objective)),
        key=lambda g: _rank_key(g.mean, objective, g.job, g.runs[0]),
    )
    if groups:
        top = groups[0]
        refit = next(  # finalists.refit: the winner retrained on training + validation images stands for it
            (t for t in top.job.trials if t.status == "completed" and str(t.record.get("refit_of")) == top.trial_id),
            None,
        )
        return top.job, refit or top.closest_to_mean(), top
    ranked = ranking(sweep, objective)
    return (ranked[0][0], ranked[0][1], None) if ranked else None


def _rank_key(value: float, objective: str, job: Job, trial: Trial) -> tuple:
    return ((1 if minimised(objective) else -1) * value, job.name, _trial_order(trial.path))


# Settings that reproduce one trial: its hyperparameters become a one-point search.
_PINNED_KEYS = ("search.learning_rate", "search.optimizers", "search.unfreeze_depths", "tuner", "finalists")


def reproduce_command(job: Job, trial: Trial) -> str:
    """``python -m tlsweep …`` that runs the job's config with only this trial's hyperparameters, and its
    seed (a finalist run's seed too): it trains the same, and gives the same metrics on CPU."""
    hyperparameters = trial.record.get("hyperparameters", {})
    kept = [o for o in job.overrides if not _pinned(split_override(o)[0])]
    pinned = []
    if "learning_rate" in hyperparameters:
        lr = float(hyperparameters["learning_rate"])
        pinned += [f"search.learning_rate.min={lr!r}", f"search.learning_rate.max={lr!r}"]
    if "optimizer" in hyperparameters:
        pinned.append(f"search.optimizers=[{hyperparameters['optimizer']}]")
    if job.config.get("finetune", {}).get("mode", "top") == "top" and "unfreeze_depth" in hyperparameters:
        pinned.append(f"search.unfreeze_depths=[{int(hyperparameters['unfreeze_depth'])}]")
    pinned += ["tuner=random", "tuner.max_trials=1", "finalists.top=0"]
    if trial.record.get("replicate"):
        pinned.append(f"finalists.replicate={int(trial.record['replicate'])}")
    return " ".join(["python -m tlsweep", *(shlex.quote(o) for o in [*kept, *pinned])])


def _pinned(key: str) -> bool:
    if key == "tuner.objective":
        return False
    return any(key == p or key.startswith(p + ".") for p in _PINNED_KEYS)
