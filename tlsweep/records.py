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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.objective import OBJECTIVE_NAMES, Objective

DEPTH = "finetune.unfreeze_depth"  # the hyperparameter that says where a run's stage 2 trained
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1")
class RecordError(ValueError):
    """A record that cannot be used: its message names the file and what is wrong with it.

    The one rule for every value read from disk: it is valid by its record's schema — the dataclass
    that holds it, its fields' types, and the fields it must have (``REQUIRED``) or whose values are
    few (``one_of``) — or the file is named as damaged wherever it would have been used. Nothing is
    defaulted in place of a value that is missing or of the wrong kind, and nothing derived from it is
    shipped. A field may be absent only where its absence means something (a run that is no finalist
    has no ``finalist_of``)."""


RUN_STATUSES = ("running", "completed", "pruned", "failed")
JOB_STATUSES = ("running", "completed", "failed", "interrupted", "paused", "stopped")
STAGES = ("head", "finetune")
STOPS = ("pruned", "budget", "patience")
REQUIRED = {"required": True}


def one_of(values: tuple[str, ...], required: bool = True) -> dict[str, Any]:
    """A field's metadata: its value is one of ``values`` (and the record must have it, unless not ``required``)."""
    return {"one_of": values, "required": required}


def parse_fields(cls: type, data: Any, name: str, prefix: str = "") -> dict[str, Any]:
    """The fields of dataclass ``cls`` in ``data``, each checked against its type: RecordError (``name``: what
    the data is, ``prefix`` its fields' names, for the message) for a field of the wrong kind, a required one
    missing, or a value not among its few. Fields ``data`` leaves out keep their defaults; other keys are
    not read."""
    data = _mapping(data, name, missing_ok=False)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        required = f.metadata.get("required") or f.default is f.default_factory is dataclasses.MISSING
        if data.get(f.name) is None and (required or f.name not in data):
            if required:
                raise RecordError(f"{name} has no {f.name}")
            continue
        value, allowed = data[f.name], f.metadata.get("one_of")
        if allowed and value is not None and (not isinstance(value, str) or value not in allowed):
            raise RecordError(f"{prefix}{f.name} is {value!r}, not one of {', '.join(allowed)}")
        values[f.name] = _valid(value, hints[f.name], prefix + f.name)
    return values


def _valid(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` says (metrics that are NaN or infinite as None); RecordError otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        if value is None:
            return None
        hint = args[0]
    origin, kind = typing.get_origin(hint), hint
    if kind is Any:
        return value
    if origin is dict:
        return _mapping(value, name, missing_ok=False)
    if origin is list:
        item = typing.get_args(hint)[0]
        entries = _list(value, name)
        if dataclasses.is_dataclass(item):
            return [item(**parse_fields(item, e, f"{name}[{i}]", f"{name}'s ")) for i, e in enumerate(entries)]
        return [_valid(e, item, name) for e in entries]
    if kind is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{name} is {value!r}, not true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise RecordError(f"{name} is {value!r}, not a text")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{name} is {value!r}, not a {'whole ' if kind is int else ''}number")
    if kind is int:
        if not math.isfinite(value) or value != int(value):
            raise RecordError(f"{name} is {value!r}, not a whole number")
        return int(value)
    if not math.isfinite(value):
        if not optional:
            raise RecordError(f"{name} is {value!r}, not a number")
        return None
    return float(value)


def _mapping(value: Any, name: str, missing_ok: bool = True) -> dict[str, Any]:
    if value is None and missing_ok:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{name} is {type(value).__name__ if value is not None else None}, not a mapping")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecordError(f"{name} is {value!r}, not a list")
    return value


@dataclass
class Epoch:
    """One epoch of a run: the stage it belongs to, its metrics, its learning rate and time."""

    epoch: int
    stage: str = field(default="head", metadata=one_of(STAGES))
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


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before its last epoch: ``by`` pruned, budget or patience."""

    by: str = field(metadata=one_of(STOPS))
    epoch: int
    stage: str = field(metadata=one_of(STAGES))
    why: str
    rule: str | None = None


@dataclass
class RunRecord:
    """One run of a configuration, as ``trials/trial_<id>.json`` holds it.

    ``replicate`` says which of the configuration's seeds it is (0: the search's); ``budget_epochs``
    is an epoch budget a tuner set (Hyperband) and ``continues`` the run it continued from, both None
    for a run of the full schedule from scratch. Only such runs are compared over seeds.
    """

    trial_id: str
    job: str = ""
    status: str = field(default="running", metadata=one_of(RUN_STATUSES))
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    objective: str = field(default="val_accuracy", metadata=one_of(OBJECTIVE_NAMES))
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
    best_stage: str | None = field(default=None, metadata=one_of(STAGES, required=False))
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
    def depth(self) -> Any:
        """Where the run's stage 2 trained (its unfreeze depth); None without stage 2."""
        return self.hyperparameters.get(DEPTH)

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
            return cls(**parse_fields(cls, data, "the record"))
        except RecordError as e:
            raise RecordError(f"{name}: {e}" if name else str(e)) from None


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

    job: str = ""
    status: str = field(default="running", metadata=one_of(JOB_STATUSES))
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
        """A job record from its JSON (what it found, beside the fields, is its summary), or RecordError."""
        try:
            fields = parse_fields(cls, data, "the record")
        except RecordError as e:
            raise RecordError(f"{name}: {e}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k != "summary"},
                   summary={k: v for k, v in data.items() if k not in known})  # fmt: skip


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


@dataclass(frozen=True)
class ExportRecord:
    """The schema of an export folder's ``export.json`` (``tlsweep.export`` writes more; these are read)."""

    format: str = field(metadata=one_of((EXPORT_FORMAT,)))
    version: int
    classes: list[str]
    formats: dict[str, Any]
    image_size: int | None = None
    job: str | None = None
    trial: str | None = None


@dataclass(frozen=True)
class ClassScore:
    name: str
    precision: float
    recall: float
    images: int


@dataclass(frozen=True)
class TestRecord:
    """The schema of an export folder's ``evaluation.json``: the held-out test of the exported model."""

    accuracy: float
    images: int
    classes: list[ClassScore]
    confusion: list[Any]


def read_export(folder: Path) -> dict[str, Any] | None:
    """An export folder's ``export.json``; None if there is none; RecordError naming the file if it is damaged
    or not an export record. A version this tlsweep does not know is read: whoever uses it says what to do."""
    data = _read_schema(Path(folder) / files.EXPORT_RECORD, ExportRecord, "an export record")
    if data is not None and not (data["classes"] and data["formats"]):
        raise RecordError(f"{Path(folder).name}/{files.EXPORT_RECORD} lists no classes or no model files")
    return data


def read_evaluation(folder: Path) -> dict[str, Any] | None:
    """An export folder's ``evaluation.json``; None if there is none; RecordError naming it if it is damaged."""
    return _read_schema(Path(folder) / files.EVALUATION, TestRecord, "a test record")


def _read_schema(path: Path, schema: type, kind: str) -> dict[str, Any] | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        parse_fields(schema, data, "it")
    except RecordError as e:
        raise RecordError(f"{path.parent.name}/{path.name} is not {kind} ({e})") from None
    return data
