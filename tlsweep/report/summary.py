"""From trial records to answers: one row per trial, the ranking, each choice's effect, warnings.

A row is a flat dict (the columns of ``trials.csv``) so every output — HTML, Markdown, CSV — shows
the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tlsweep.config import run_key, split_override
from tlsweep.errors import TlsweepError
from tlsweep.objective import Objective
from tlsweep.records import Epoch, best_epoch_of
from tlsweep.results import (
    Group,
    Job,
    Sweep,
    Trial,
    Winner,
    finalist_candidates,
    finalist_groups,
    rank_key,
    ranking,
    winner,
)
from tlsweep.space import flatten, parse_knob

CHOICE_ORDER = ("backbone", "augmentation", "dataset", "finetune", "tuner", "search", "experiment")
HIDDEN_CHOICES = ("optimizer",)  # the loaded optimizers; the one a trial used is a hyperparameter
HYPERPARAMETER_ORDER = ("finetune.learning_rate", "finetune.optimizer", "finetune.unfreeze_depth")

METRIC_COLUMNS = (
    "val_accuracy",
    "val_loss",
    "val_balanced_accuracy",
    "val_macro_f1",
    "train_accuracy",
    "train_loss",
    "stage1_val_accuracy",
    "stage1_val_loss",
    "best_epoch",
    "best_stage",
    "stage2",
    "epochs",
    "stopped",  # why a trial ended early: pruned (and by which rule), the budget, a stage's patience
    "trial_seed",  # the run's own seed (a swept ``seed`` is a column of its own)
    "finalist_of",  # a finalist run: the search trial whose configuration it repeats with another seed
    "mean_over_seeds",  # a finalist's runs: their mean, and the 95% interval of that mean
    "interval_low",
    "interval_high",
    "duration_s",
    "race",  # in a race: what it did with the trial's job (the same line as the report's and the terminal's)
    "overfitting",
    "error",
    "tensorboard",
)
METRIC_OF_OBJECTIVE = {  # the column that holds each tuner objective
    "val_accuracy": "val_accuracy",
    "val_loss": "val_loss",
    "val_balanced_accuracy": "val_balanced_accuracy",
    "val_macro_f1": "val_macro_f1",
    "accuracy": "train_accuracy",
    "loss": "train_loss",
}
GROUPS = ("backbone", "augmentation")  # always compared, when present, before the hyperparameters
MANY_VALUES = 8  # a whole-number interval with more values than this is compared in a plot, not value by value
OVERFIT_MIN_RISE = 2  # epochs of rising validation loss after its minimum
OVERFIT_MIN_GAP_GROWTH = 0.05  # growth of (train accuracy - validation accuracy) since that minimum


@dataclass
class Table:
    """Rows (dicts) and the order of their columns."""

    columns: list[str]
    rows: list[dict[str, Any]]


@dataclass
class Effect:
    """How one value of one group did across all trials that used it."""

    group: str
    value: str
    trials: int
    best: float
    median: float
    worst: float
    best_trial: str
    noise: str = ""  # "within seed noise" or "beyond seed noise" of the group's best value, when finalists tell


@dataclass
class Finalist:
    """A configuration run with several seeds: how it did on average, and against the winner."""

    job: str
    trial: str
    runs: int
    mean: float
    low: float
    high: float
    worst: float
    best: float
    verdict: str  # "best", "within noise of the best" or "behind the best"


@dataclass
class Summary:
    """What a report says about a sweep."""

    sweep: Sweep
    objective: str
    metric: str  # the column the objective is in
    table: Table
    setup_columns: list[str]  # group choices and swept overrides
    hyperparameter_columns: list[str]
    continuous: list[str]  # searched on an interval: each trial draws its own value, shown in a plot, not as rows
    effects: list[Effect]
    warnings: list[str]
    finalists: list[Finalist] = field(default_factory=list)  # best mean first: the first is the answer
    not_finalists: list[str] = field(default_factory=list)  # why a configuration of a job's top is not a finalist
    winner: Winner | None = None  # the answer (``tlsweep.results.winner``)

    @property
    def constants(self) -> dict[str, Any]:
        """Setup and hyperparameter columns with one value in every trial: said once, not in every row."""
        constants = {}
        for column in (*self.setup_columns, *self.hyperparameter_columns):
            values = {str(r[column]) for r in self.table.rows if r.get(column) is not None}
            if len(values) == 1 and all(r.get(column) is not None for r in self.table.rows):
                constants[column] = self.table.rows[0][column]
        return constants

    @property
    def shown_columns(self) -> list[str]:
        """The table's columns less the constants, and less the job in a single run (the CSV keeps every column)."""
        hidden = {*self.constants, *(["job"] if len(self.sweep.jobs) == 1 else [])}
        return [c for c in self.table.columns if c not in hidden]

    @property
    def ranked(self) -> list[dict[str, Any]]:
        return [r for r in self.table.rows if r["rank"] is not None]

    @property
    def best(self) -> dict[str, Any] | None:
        """The row of the run that stands for the answer: the winning configuration's run closest to its mean
        (a refit, which holds nothing out, does not have the numbers), else the best trial."""
        if self.winner is None:
            return None
        key = (self.winner.job.name, self.winner.run.trial_id)
        return next((r for r in self.table.rows if (r["job"], r["trial"]) == key), None)

    @property
    def maximize(self) -> bool:
        return not Objective(self.objective).minimise


def summarize(sweep: Sweep) -> Summary:
    """Rank every trial of the sweep by its jobs' objective and compare the choices."""
    objective = sweep.objective
    metric = METRIC_OF_OBJECTIVE.get(objective.name, "val_accuracy")
    maximize = not objective.minimise
    varying = _varying_overrides(sweep.jobs)
    rows = [_row(job, trial, objective, varying, sweep) for job, trial in sweep.trials]
    groups = [g for job in sweep.jobs for g in finalist_groups(job, objective)]
    _add_group_columns(rows, groups)
    ranks = {(job.name, trial.trial_id): n for n, (job, trial, _) in enumerate(ranking(sweep, objective), 1)}
    for row in rows:
        row["rank"] = ranks.get((row["job"], row["trial"]))
    choice_keys = _ordered({k for r in rows for k in r.get("_choices", {})}, CHOICE_ORDER)
    hp_keys = _ordered({k for r in rows for k in r.get("_hyperparameters", {})}, HYPERPARAMETER_ORDER)
    for row in rows:
        choices, hps = row.pop("_choices"), row.pop("_hyperparameters")
        row.update({k: choices.get(k) for k in choice_keys}, **{k: hps.get(k) for k in hp_keys})
    columns = ["rank", "job", "trial", "status", *choice_keys, *varying, *hp_keys, *METRIC_COLUMNS]
    table = Table(columns, sorted(rows, key=_display_order))
    noise = _seed_noise(groups)
    searched = [r for r in table.rows if r.get("finalist_of") is None]  # a finalist's extra seeds repeat a trial
    effects = []
    intervals = _drawn_from_intervals(sweep)
    continuous = [k for k in hp_keys if k in intervals or _many_numbers(rows, k)]
    choices = [k for k in hp_keys if k not in continuous]  # a choice's every value gets a row of its own
    for group in dict.fromkeys(g for g in (*GROUPS, *choices, *choice_keys, *varying) if g in columns):
        group_effect = group_effects(searched, group, metric, maximize, name_jobs=len(sweep.jobs) > 1)
        if len(group_effect) > 1:  # one value everywhere shows no effect
            effects += _mark_noise(group_effect, noise)
    warnings = [f"{r['job']} trial_{r['trial']}: {r['overfitting']}" for r in table.rows if r["overfitting"]]
    return Summary(
        sweep,
        objective.name,
        metric,
        table,
        [*choice_keys, *varying],
        hp_keys,
        continuous,
        effects,
        warnings,
        _finalists(groups, objective),
        _not_finalists(sweep, groups, objective),
        winner(sweep, objective),
    )


def _drawn_from_intervals(sweep: Sweep) -> set[str]:
    """The settings some job of the sweep searched on an interval (its ``search.params``), as ``tlsweep.space``
    reads them: a value per trial, compared in a plot rather than value by value."""
    found = set()
    for job in sweep.jobs:
        for key, expression in flatten((job.config.get("search") or {}).get("params") or {}).items():
            try:
                knob = parse_knob(key, expression)
            except TlsweepError:  # a job refused for its search space ran nothing to compare
                continue
            if knob.kind == "float" or len(knob.every_value() or ()) > MANY_VALUES:
                found.add(key)
    return found


def _many_numbers(rows: list[dict[str, Any]], key: str) -> bool:
    """Whether the runs took more than ``MANY_VALUES`` numbers for ``key`` (runs of a search space not recorded)."""
    values = {r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)}
    return len(values) > MANY_VALUES


def _add_group_columns(rows: list[dict[str, Any]], groups: list[Group]) -> None:
    """Each finalist run's row gets its configuration's mean over seeds and that mean's 95% interval."""
    by_run = {(g.job.name, t.trial_id): g for g in groups for t in g.runs}
    for row in rows:
        group = by_run.get((row["job"], row["trial"]))
        low, high = group.interval if group else (None, None)
        row.update(mean_over_seeds=group.mean if group else None, interval_low=low, interval_high=high)


def _not_finalists(sweep: Sweep, groups: list[Group], objective: Objective) -> list[str]:
    """Why each configuration of a job's top that ran no seeds is not a finalist (the log says the same)."""
    jobs = [job for job in sweep.jobs if any(g.job is job for g in groups)]
    prefix = len(sweep.jobs) > 1
    return [
        f"{job.name} {why}" if prefix else why
        for job in jobs
        for why in finalist_candidates(job, objective, job.finalists_top)[1]
    ]


def _finalists(groups: list[Group], objective: Objective) -> list[Finalist]:
    """The finalists of every job, best mean first (as ``tlsweep.results.winner`` orders them), each judged
    against the first: an interval that overlaps the winner's is within seed noise of it."""
    ordered = sorted(groups, key=lambda g: rank_key(objective, g.mean, g.job.name, g.name))
    found = []
    for i, group in enumerate(ordered):
        low, high = group.interval
        top_low, top_high = ordered[0].interval
        overlaps = low <= top_high and top_low <= high
        verdict = "best" if i == 0 else ("within noise of the best" if overlaps else "behind the best")
        found.append(
            Finalist(
                group.job.name, group.trial_id, len(group.values), group.mean, low, high,
                min(group.values) if not objective.minimise else max(group.values),
                max(group.values) if not objective.minimise else min(group.values),
                verdict,
            )
        )  # fmt: skip
    return found


def _seed_noise(groups: list[Group]) -> float | None:
    """How much one configuration's result moves with the seed alone: the pooled standard deviation of
    the finalists' runs (None without finalists)."""
    spreads = [(len(g.values) - 1, statistics.variance(g.values)) for g in groups if len(g.values) > 1]
    freedom = sum(n for n, _ in spreads)
    return math.sqrt(sum(n * v for n, v in spreads) / freedom) if freedom else None


def _mark_noise(effects: list[Effect], noise: float | None) -> list[Effect]:
    """Say which values' best results differ from the group's best by more than seed noise: two single
    draws differ by more than 1.96·√2·σ by chance only one time in twenty."""
    if noise is None or not effects:
        return effects
    margin = 1.96 * math.sqrt(2) * noise
    for effect in effects[1:]:
        effect.noise = "beyond seed noise" if abs(effects[0].best - effect.best) > margin else "within seed noise"
    return effects


def _row(job: Job, trial: Trial, objective: Objective, varying: list[str], sweep: Sweep) -> dict[str, Any]:
    run, history = trial.run, trial.run.history
    completed = trial.status == "completed"
    best = run.kept() or Epoch(0)
    head = run.stages.get("head", {}) if completed else {}
    stage1 = run.epoch(head.get("epoch")) or best_epoch_of([e for e in history if e.stage == "head"], objective)
    stage1 = stage1 or Epoch(0)
    overrides = dict(split_override(o) for o in job.overrides)
    choices = {k: str(v) for k, v in (run.choices or job.record.choices or {}).items()}
    return {
        "rank": None,
        "job": job.name,
        "trial": trial.trial_id,
        "status": trial.status,
        "_choices": {k: v for k, v in choices.items() if k not in HIDDEN_CHOICES},
        **{k: overrides.get(k) for k in varying},
        "_hyperparameters": run.hyperparameters,
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "val_balanced_accuracy": best.val_balanced_accuracy,
        "val_macro_f1": best.val_macro_f1,
        "train_accuracy": best.accuracy,
        "train_loss": best.loss,
        "stage1_val_accuracy": stage1.val_accuracy,
        "stage1_val_loss": stage1.val_loss,
        "best_epoch": best.epoch or None,
        "best_stage": best.stage if best.epoch else None,
        "stage2": _stage2(trial),
        "epochs": len(history),
        "stopped": _stopped(trial),
        "trial_seed": run.seed,
        "finalist_of": run.finalist_of or run.refit_of,
        "duration_s": run.duration_s,
        "race": sweep.race_line(job) or None,
        "overfitting": overfitting(history),
        "error": trial.error,
        "tensorboard": str((trial.path.parent.parent / run.tensorboard).relative_to(sweep.root))
        if run.tensorboard
        else None,
    }


def _stopped(trial: Trial) -> str | None:
    """Where and why the trial stopped early, e.g. ``pruned at epoch 3 (median)``; a refit says what it is."""
    if trial.run.refit_of:
        return f"refit on every image for {trial.run.best_epoch} epochs"
    shown = []
    for event in trial.run.stopped:
        by = "patience in stage 2" if event.by == "patience" and event.stage == "finetune" else event.by
        by = "patience in stage 1" if by == "patience" else by
        shown.append(f"{by} at epoch {event.epoch}" + (f" ({event.rule})" if event.rule else ""))
    return "; ".join(shown) or None


def _stage2(trial: Trial) -> str:
    if not any(e.stage == "finetune" for e in trial.run.history):
        return "not run"
    if trial.status != "completed":
        return "unfinished"
    return "rolled back" if trial.run.rolled_back else "improved"


def _display_order(row: dict[str, Any]) -> tuple:
    return (row["rank"] is None, row["rank"] or 0, row["job"], _num(row["trial"]))


def _num(trial_id: str) -> tuple[int, str]:
    return (int(trial_id), "") if str(trial_id).isdigit() else (1 << 30, str(trial_id))


def group_effects(
    rows: list[dict[str, Any]], group: str, metric: str, maximize: bool = True, name_jobs: bool = True
) -> list[Effect]:
    """Best, median and worst ``metric`` of the ranked trials for each value of ``group``, best value first.

    ``name_jobs``: name the best trial with its job (a sweep), or by its id alone (a single run)."""
    by_value: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["rank"] is not None and row.get(group) is not None:
            by_value.setdefault(str(row[group]), []).append(row)
    effects = []
    for value, members in by_value.items():
        scores = [r[metric] for r in members]
        best_row = min(members, key=lambda r: r["rank"])
        effects.append(
            Effect(
                group,
                value,
                len(members),
                best=max(scores) if maximize else min(scores),
                median=statistics.median(scores),
                worst=min(scores) if maximize else max(scores),
                best_trial=f"{best_row['job'] + ' ' if name_jobs else ''}trial_{best_row['trial']}",
            )
        )
    return sorted(effects, key=lambda e: (-e.best if maximize else e.best, -e.median if maximize else e.median))


def overfitting(history: list[Epoch]) -> str | None:
    """A warning when, after its minimum, validation loss keeps rising while the train/val gap grows."""
    epochs = [e for e in history if None not in (e.val_loss, e.accuracy, e.val_accuracy)]
    if len(epochs) < OVERFIT_MIN_RISE + 1:
        return None
    low = min(range(len(epochs)), key=lambda i: epochs[i].val_loss)  # type: ignore[arg-type,return-value]
    after = epochs[low:]
    rises = sum(b.val_loss > a.val_loss for a, b in zip(after, after[1:], strict=False))  # type: ignore[operator]
    gap_then = epochs[low].accuracy - epochs[low].val_accuracy  # type: ignore[operator]
    gap_now = epochs[-1].accuracy - epochs[-1].val_accuracy  # type: ignore[operator]
    if rises < OVERFIT_MIN_RISE or gap_now - gap_then < OVERFIT_MIN_GAP_GROWTH:
        return None
    return (
        f"overfits after epoch {epochs[low].epoch}: validation loss rose from {epochs[low].val_loss:.3f} "
        f"to {epochs[-1].val_loss:.3f} while the train/validation accuracy gap grew from {gap_then:+.3f} "
        f"to {gap_now:+.3f} (more augmentation or dropout, fewer epochs, or a lower learning rate may help)"
    )


def accuracy_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy measured on ``n`` validation images."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _varying_overrides(jobs: list[Job]) -> list[str]:
    """Override keys (not config groups) whose value differs between jobs, e.g. ``finetune.lr_scale``."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        overrides = dict(split_override(o) for o in job.overrides)
        for key in {*values, *overrides}:
            values.setdefault(key, set()).add(overrides.get(key, "(default)"))
    groups = {k for job in jobs for k in job.record.choices} | set(CHOICE_ORDER)
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in groups and not run_key(k))


def _ordered(keys: Iterable[str], first: Iterable[str]) -> list[str]:
    keys = set(keys)
    return [k for k in first if k in keys] + sorted(keys - set(first))
