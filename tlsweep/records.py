"""The records a job leaves on disk, typed: the one reader and writer of run and job records.

A run is one training of one configuration: a search trial, a finalist's extra seed, or the
winner's refit. Its record (``trials/trial_<id>.json``) is rewritten atomically after every epoch;
the job's record (``job.json``) says whether the job runs, completed or failed, and why. Every
module that needs a record reads it here, so a damaged file is named the same way everywhere
(``RecordError``) and never shows as a result.

This module sits at the bottom of the import order: it imports only ``tlsweep.files``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsweep import files

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1")
OBJECTIVE_NAMES = ("val_accuracy", "val_loss", "val_balanced_accuracy", "val_macro_f1", "accuracy", "loss")
LOSS_NOISE = 0.02  # a loss's measurement noise, relative: losses have no binomial yardstick
Z = 1.96  # 95%, two-sided


@dataclass(frozen=True)
class Objective:
    """The metric a search optimises, and which way: losses are minimised, everything else maximised."""

    name: str

    @property
    def minimise(self) -> bool:
        return self.name.endswith("loss")

    @property
    def proportion(self) -> bool:
        """Whether the metric is a share of the validation images (it moves in steps of one image), not a loss."""
        return self.name in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1", "accuracy")

    def better(self, value: float, than: float) -> bool:
        return value < than if self.minimise else value > than

    def noise(self, value: float, images: int | None) -> float:
        """One measurement's standard error at ``value``: for a share of ``images`` validation images
        √(p(1−p)/n), at least one image's worth; for a loss, ``LOSS_NOISE`` of it."""
        if self.proportion and images:
            p = min(max(value, 0.0), 1.0)
            return math.sqrt(max(p * (1 - p), 1.0 / images) / images)
        return LOSS_NOISE * abs(value)

    def margin(self, value: float, other: float, images: int | None, other_images: int | None = None) -> float:
        """How far two single measurements (one run each) can lie apart by noise alone: 1.96·√(σ₁² + σ₂²).

        The one rule for "clearly behind" on one draw: the race's cut between jobs and the finalists' entry
        both use it. A seed's run is a fresh draw of the validation errors, so its spread is about this noise."""
        other_images = images if other_images is None else other_images
        return Z * math.hypot(self.noise(value, images), self.noise(other, other_images))

    def key(self, value: float) -> float:
        """A sort key that puts the best value first."""
        return value if self.minimise else -value


class RecordError(ValueError):
    """A record that cannot be used: its message names the file and what is wrong with it.

    The one rule for every value read from disk: it is valid by its record's schema (the parsers
    below), or the file is named as damaged wherever it would have been used. Nothing is defaulted
    in place of a value that is missing or of the wrong kind, and nothing derived from it is shipped.
    A field may be absent only where its absence means something (a run that is no finalist has no
    ``finalist_of``)."""


RUN_STATUSES = ("running", "completed", "pruned", "failed")
JOB_STATUSES = ("running", "completed", "failed", "interrupted", "paused", "stopped")
STAGES = ("head", "finetune")
STOPS = ("pruned", "budget", "patience")


def _required(data: dict[str, Any], key: str, name: str) -> Any:
    if data.get(key) is None:
        raise RecordError(f"{name} has no {key}")
    return data[key]


def _one_of(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise RecordError(f"{name} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _number(value: Any, name: str) -> float | None:
    """A metric as a float; None for a missing, NaN or infinite one; RecordError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{name} is {value!r}, not a number")
    return float(value) if math.isfinite(value) else None


def _whole(value: Any, name: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise RecordError(f"{name} is {value!r}, not a whole number")
    return int(value)


def _text(value: Any, name: str = "a text") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{name} is {value!r}, not a text")
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecordError(f"{name} is {value!r}, not true or false")
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{name} is {type(value).__name__}, not a mapping")
    return value


def _list(value: Any, name: str, missing_ok: bool = True) -> list[Any]:
    if value is None and missing_ok:
        return []
    if not isinstance(value, list):
        raise RecordError(f"{name} is {value!r}, not a list")
    return value


@dataclass
class Epoch:
    """One epoch of a run: the stage it belongs to, its metrics, its learning rate and time."""

    epoch: int
    stage: str = "head"
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_balanced_accuracy: float | None = None
    val_macro_f1: float | None = None
    learning_rate: float | None = None
    seconds: float | None = None

    def metric(self, name: str) -> float | None:
        return getattr(self, name, None) if name in METRICS else None

    @classmethod
    def parse(cls, data: Any) -> Epoch:
        data = _mapping(data, "an epoch of history")
        values = {k: _number(data.get(k), f"history's {k}") for k in (*METRICS, "learning_rate", "seconds")}
        epoch = _whole(_required(data, "epoch", "an epoch of history"), "history's epoch")
        stage = _one_of(_required(data, "stage", f"epoch {epoch} of history"), f"epoch {epoch}'s stage", STAGES)
        return cls(epoch, stage, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before its last epoch: ``by`` pruned, budget or patience."""

    by: str
    epoch: int
    stage: str
    why: str
    rule: str | None = None

    @classmethod
    def parse(cls, data: Any) -> Stop:
        data = _mapping(data, "a stop")
        return cls(
            _one_of(data.get("by"), "a stop's by", STOPS),
            _whole(_required(data, "epoch", "a stop"), "a stop's epoch") or 0,
            _one_of(data.get("stage"), "a stop's stage", STAGES),
            _text(data.get("why"), "a stop's why") or "",
            _text(data.get("rule"), "a stop's rule"),
        )


@dataclass
class RunRecord:
    """One run of a configuration, as ``trials/trial_<id>.json`` holds it.

    ``replicate`` says which of the configuration's seeds it is (0: the search's); ``budget_epochs``
    is an epoch budget a tuner set (Hyperband) and ``continues`` the run it continued from, both None
    for a run of the full schedule from scratch. Only such runs are compared over seeds.
    """

    trial_id: str
    job: str = ""
    status: str = "running"  # running | completed | pruned | failed
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    objective: str = "val_accuracy"
    seed: int | None = None
    replicate: int = 0
    finalist_of: str | None = None  # a finalist's extra seed: the search trial whose configuration it repeats
    refit_of: str | None = None  # a refit: the configuration (its first trial) retrained on all images
    refit_from: str | None = None  # a refit: the run whose kept epoch count it trained
    budget_epochs: int | None = None
    initial_epoch: int = 0
    continues: str | None = None
    history: list[Epoch] = field(default_factory=list)
    best_epoch: int | None = None
    best_stage: str | None = None
    rolled_back: bool = False
    stages: dict[str, Any] = field(default_factory=dict)
    stopped: list[Stop] = field(default_factory=list)
    val_recall: list[float | None] | None = None
    train_images: int | None = None
    sweep: str = ""
    choices: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    started: str = ""
    ended: str | None = None
    duration_s: float = 0.0
    error: str | None = None
    tensorboard: str | None = None

    @property
    def is_search(self) -> bool:
        return self.finalist_of is None and self.refit_of is None

    @property
    def configuration(self) -> str:
        """What identifies the configuration: its hyperparameters."""
        return json.dumps(self.hyperparameters, sort_keys=True, default=str)

    def epoch(self, number: int | None) -> Epoch | None:
        return next((e for e in self.history if e.epoch == number), None)

    def kept(self) -> Epoch | None:
        """The epoch the run's numbers come from: its kept (best) epoch once it ended, else its best so far."""
        if self.status in ("completed", "pruned") and self.best_epoch is not None:
            return self.epoch(self.best_epoch)
        return best_epoch_of(self.history, Objective(self.objective))

    @property
    def value(self) -> float | None:
        """The objective at the kept epoch (None for a refit, which holds nothing out to score on)."""
        kept = self.kept()
        return kept.metric(self.objective) if kept else None

    def stop(self, by: str) -> Stop | None:
        return next((s for s in self.stopped if s.by == by), None)

    @property
    def full_schedule(self) -> bool:
        """Trained every epoch of the job's schedule from scratch, unless patience ended a stage."""
        return self.budget_epochs is None and self.continues is None and self.stop("budget") is None

    @property
    def comparable(self) -> bool:
        """Whether the run counts toward its configuration's mean over seeds: completed, scored, and trained
        on the full schedule (not a Hyperband budget, not cut short by the job's time budget)."""
        return self.status == "completed" and self.refit_of is None and self.full_schedule and self.value is not None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON; ``value`` (the objective at the kept epoch) is written for other readers only."""
        data = {**dataclasses.asdict(self), "value": self.value}
        data["history"] = [dataclasses.asdict(e) for e in self.history]
        data["stopped"] = [{k: v for k, v in dataclasses.asdict(s).items() if v is not None} for s in self.stopped]
        return data

    @classmethod
    def parse(cls, data: Any, name: str = "") -> RunRecord:
        """A record from its JSON, or RecordError saying what is wrong (``name``: the file, for the message)."""
        try:
            return cls._parse(_mapping(data, "the record"))
        except RecordError as e:
            raise RecordError(f"{name}: {e}" if name else str(e)) from None

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> RunRecord:
        trial_id = _required(data, "trial_id", "the record")
        if not isinstance(trial_id, (str, int)) or isinstance(trial_id, bool):
            raise RecordError(f"trial_id is {trial_id!r}, not a trial id")
        recall = data.get("val_recall")
        return cls(
            trial_id=str(trial_id),
            job=_text(data.get("job"), "job") or "",
            status=_one_of(data.get("status"), "status", RUN_STATUSES),
            hyperparameters=_mapping(data.get("hyperparameters"), "hyperparameters"),
            objective=_one_of(data.get("objective"), "objective", OBJECTIVE_NAMES),
            seed=_whole(data.get("seed"), "seed"),
            replicate=_whole(data.get("replicate"), "replicate", 0) or 0,
            finalist_of=_text(data.get("finalist_of"), "finalist_of"),
            refit_of=_text(data.get("refit_of"), "refit_of"),
            refit_from=_text(data.get("refit_from"), "refit_from"),
            budget_epochs=_whole(data.get("budget_epochs"), "budget_epochs"),
            initial_epoch=_whole(data.get("initial_epoch"), "initial_epoch", 0) or 0,
            continues=_text(data.get("continues"), "continues"),
            history=[Epoch.parse(e) for e in _list(data.get("history", []), "history", missing_ok=False)],
            best_epoch=_whole(data.get("best_epoch"), "best_epoch"),
            best_stage=None if data.get("best_stage") is None else _one_of(data["best_stage"], "best_stage", STAGES),
            rolled_back=_flag(data.get("rolled_back"), "rolled_back"),
            stages=_mapping(data.get("stages"), "stages"),
            stopped=[Stop.parse(s) for s in _list(data.get("stopped"), "stopped")],
            val_recall=None if recall is None else [_number(r, "val_recall") for r in _list(recall, "val_recall")],
            train_images=_whole(data.get("train_images"), "train_images"),
            sweep=_text(data.get("sweep"), "sweep") or "",
            choices=_mapping(data.get("choices"), "choices"),
            settings=_mapping(data.get("settings"), "settings"),
            data=_mapping(data.get("data"), "data"),
            worker=_text(data.get("worker"), "worker"),
            started=_text(data.get("started"), "started") or "",
            ended=_text(data.get("ended"), "ended"),
            duration_s=_number(data.get("duration_s"), "duration_s") or 0.0,
            error=_text(data.get("error"), "error"),
            tensorboard=_text(data.get("tensorboard"), "tensorboard"),
        )


def best_epoch_of(history: list[Epoch], objective: Objective) -> Epoch | None:
    """The epoch of ``history`` with the best ``objective``; None when none has scored."""
    scored = [e for e in history if e.metric(objective.name) is not None]
    return min(scored, key=lambda e: objective.key(e.metric(objective.name)), default=None)  # type: ignore[arg-type]


def run_path(job_dir: Path, run_id: str) -> Path:
    return Path(job_dir) / files.TRIALS_DIR / f"trial_{run_id}.json"


def write_run(path: Path, record: RunRecord, durable: bool = True) -> None:
    files.write_json(path, record.to_json(), durable)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None if there is no file; RecordError naming the file if it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path.name} is unreadable ({type(e).__name__}: {e})") from None


def read_run(path: Path) -> RunRecord | None:
    """The run record in ``path``; None if there is none; RecordError if it is damaged."""
    data = read_json(path)
    return None if data is None else RunRecord.parse(data, path.name)


def run_order(run_id: str) -> tuple[int, str]:
    """Runs in the order they were made: search trials by number, then a trial's seeds and refit."""
    head, _, tail = str(run_id).partition(".")
    return (int(head), tail) if head.isdigit() else (1 << 30, str(run_id))


def run_files(job_dir: Path) -> list[Path]:
    """The job's run records, in run order."""
    found = (Path(job_dir) / files.TRIALS_DIR).glob("trial_*.json")
    return sorted(found, key=lambda p: run_order(p.stem.removeprefix("trial_")))


def read_runs(job_dir: Path) -> list[RunRecord]:
    """The job's readable run records, in run order; a record being replaced or damaged is left out
    (pruning and the budget read them while other processes write)."""
    found = []
    for path in run_files(job_dir):
        try:
            record = read_run(path)
        except RecordError:
            continue
        if record is not None:
            found.append(record)
    return found


@dataclass
class JobRecord:
    """A job, as ``job.json`` holds it: its status, what it is for, and once done what it found."""

    job: str
    status: str = "running"  # running | completed | failed | interrupted
    choices: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    pid: int | None = None
    started: str = ""
    duration_s: float | None = None
    error: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # trials, best, data sizes, search time, budget, race

    def get(self, key: str, default: Any = None) -> Any:
        """A value of the job's summary (``trials``, ``classes``, ``stopped_by_budget``, …)."""
        return self.summary.get(key, default)

    def result(self) -> dict[str, Any]:
        """What a sweeper reads of a job that ran: its status, its best value, on how many validation images."""
        value, race = (self.get("best") or {}).get("value"), self.get("race") or {}
        return {"job": self.job, "status": self.status, "value": value, "val_images": self.get("val_images"),
                "trials": self.get("trials"), "round": race.get("round"), "search_trials": race.get("search_trials"),
                "stopped_by_budget": bool(self.get("stopped_by_budget"))}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "summary"}
        return {**data, **self.summary}

    @classmethod
    def parse(cls, data: Any, name: str = files.JOB_RECORD) -> JobRecord:
        try:
            data = _mapping(data, "the record")
            known = {f.name for f in dataclasses.fields(cls)} - {"summary"}
            return cls(
                job=_text(data.get("job"), "job") or "",
                status=_one_of(data.get("status"), "status", JOB_STATUSES),
                choices=_mapping(data.get("choices"), "choices"),
                host=_text(data.get("host"), "host") or "",
                pid=_whole(data.get("pid"), "pid"),
                started=_text(data.get("started"), "started") or "",
                duration_s=_number(data.get("duration_s"), "duration_s"),
                error=_text(data.get("error"), "error"),
                identity=_mapping(data.get("identity"), "identity"),
                config=_mapping(data.get("config"), "config"),
                summary={k: v for k, v in data.items() if k not in known},
            )
        except RecordError as e:
            raise RecordError(f"{name}: {e}") from None


def read_job(job_dir: Path) -> JobRecord | None:
    """The job's ``job.json``; None if there is none; RecordError if it is damaged."""
    data = read_json(Path(job_dir) / files.JOB_RECORD)
    return None if data is None else JobRecord.parse(data)


def write_job(job_dir: Path, record: JobRecord) -> None:
    files.write_json(Path(job_dir) / files.JOB_RECORD, record.to_json())


def spent_in_runs(job_dir: Path) -> float:
    """Seconds the job's runs took, as their records say: a resumed job's time budget counts them."""
    return sum(r.duration_s for r in read_runs(job_dir))


EXPORT_FORMAT = "tlsweep-export"
EXPORT_VERSION = 1  # bump when the export folder's layout changes; predict refuses versions it does not know


def read_export(folder: Path) -> dict[str, Any] | None:
    """An export folder's ``export.json`` (what ``tlsweep.export`` wrote); None if there is none; RecordError
    naming the file if it is damaged or not an export record. A version this tlsweep does not know is read:
    whoever uses the export says what to do about it."""
    path = Path(folder) / files.EXPORT_RECORD
    data = read_json(path)
    if data is None:
        return None
    name = f"{Path(folder).name}/{path.name}"
    try:
        data = _mapping(data, "it")
        if data.get("format") != EXPORT_FORMAT:
            raise RecordError(f"its format is {data.get('format')!r}, not {EXPORT_FORMAT!r}")
        _whole(_required(data, "version", "it"), "version")
        classes = _list(data.get("classes"), "classes", missing_ok=False)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise RecordError(f"classes is {classes!r}, not a list of class names")
        formats = _mapping(_required(data, "formats", "it"), "formats")
        if not formats or not all(isinstance(v, str) for v in formats.values()):
            raise RecordError(f"formats is {formats!r}, not a mapping of formats to files")
        _whole(data.get("image_size"), "image_size")
        _text(data.get("trial"), "trial")
        _text(data.get("job"), "job")
    except RecordError as e:
        raise RecordError(f"{name} is not an export record ({e})") from None
    return data


def read_evaluation(folder: Path) -> dict[str, Any] | None:
    """An export folder's ``evaluation.json`` (the held-out test); None if there is none; RecordError if damaged."""
    path = Path(folder) / files.EVALUATION
    data = read_json(path)
    if data is None:
        return None
    try:
        data = _mapping(data, "it")
        _number(_required(data, "accuracy", "it"), "accuracy")
        _whole(_required(data, "images", "it"), "images")
        for entry in _list(data.get("classes"), "classes", missing_ok=False):
            entry = _mapping(entry, "a class")
            _text(entry.get("name"), "a class's name")
            for key in ("precision", "recall"):
                _number(entry.get(key), f"a class's {key}")
            _whole(entry.get("images"), "a class's images")
        _list(data.get("confusion"), "confusion", missing_ok=False)
    except RecordError as e:
        raise RecordError(f"{Path(folder).name}/{path.name} is not a test record ({e})") from None
    return data
