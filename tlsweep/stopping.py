"""When a trial stops before its last epoch: patience inside a stage, pruning, and the job's time budget.

Both stages of every trial share one epoch axis, so a trial at epoch e can be judged against
the job's other trials at e, read from their records on disk (``trials/trial_<id>.json``, rewritten
after every epoch): this also works when several processes share a job folder, and after a resume.

- ``finetune.patience`` ends a stage after that many epochs without a better objective; stage 2
  still runs after a patient stage 1.
- ``pruning=median`` ends a trial whose best objective so far is worse than the median of the
  completed trials at the same epoch (Optuna's median rule); ``pruning=asha`` lets a trial past a
  rung of epochs (warmup × factor^k) only if it is in the top 1/factor of the trials that reached
  it (asynchronous successive halving). In stage 2, the trials of the same unfreeze depth are the
  yardstick when there are enough of them.
- ``budget`` ends a trial at the first epoch boundary after the job's deadline.
- a Ctrl-C that library code swallowed ends the job at the epoch's end (``tlsweep.interrupt``).

A trial ended by pruning or the budget keeps its best epoch, as any trial does.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from tlsweep import interrupt
from tlsweep.groups import PruningSpec
from tlsweep.objective import Objective
from tlsweep.records import Stop, read_runs


@dataclass(frozen=True)
class Peer:
    """Another trial of the job, as its record says: its status, unfreeze depth, and objective per epoch."""

    trial_id: str
    status: str
    depth: int | None
    epochs: dict[int, tuple[str, float | None]]  # epoch → (stage, the objective's value; None if not finite)

    def best_until(self, epoch: int, objective: Objective) -> float | None:
        """The best value up to ``epoch``, if the trial reached it (and scored)."""
        if epoch not in self.epochs:
            return None
        values = [v for e, (_, v) in self.epochs.items() if e <= epoch and v is not None]
        if not values:
            return None
        return min(values) if objective.minimise else max(values)


def read_peers(job_dir: Path, objective: Objective, exclude: str | None = None) -> list[Peer]:
    """The job's search trials on disk, but ``exclude`` (finalists' extra seeds and refits are not compared;
    a record being replaced or damaged is read again at the next epoch)."""
    peers = []
    for run in read_runs(job_dir):
        if run.trial_id == exclude or not run.is_search:
            continue
        depth = run.depth
        epochs = {e.epoch: (e.stage, e.metric(objective.name)) for e in run.history}
        peers.append(Peer(run.trial_id, run.status, None if depth is None else int(depth), epochs))
    return peers


def _yardstick(
    peers: list[Peer], objective: Objective, epoch: int, stage: str, depth: int | None, enough: int
) -> tuple[list[float], str]:
    """The values at ``epoch`` to judge a trial by, and which trials they are: in stage 2 those of the same
    depth when at least ``enough`` of them reached the epoch, else every trial that did."""
    reached = [(p, p.best_until(epoch, objective)) for p in peers]
    reached = [(p, v) for p, v in reached if v is not None]
    if stage == "finetune":
        same = [v for p, v in reached if p.depth == depth and p.epochs[epoch][0] == "finetune"]
        if len(same) >= enough:
            return same, f" at depth {depth}"
    return [v for _, v in reached], ""


def clearly_better(objective: Objective, value: float, than: float) -> bool:
    """``value`` beats ``than`` by more than float32 rounding. Records hold float32 metrics and a median of
    an even count is a mean of two, so a trial tied with its yardstick can read a hair worse: it goes on."""
    return objective.better(value, than) and not math.isclose(value, than, rel_tol=1e-6, abs_tol=1e-9)


@dataclass(frozen=True)
class Median:
    """Prune a trial worse than the median of the completed trials at the same epoch."""

    warmup_epochs: int
    min_trials: int
    name: str = "median"

    def verdict(
        self, objective: Objective, epoch: int, stage: str, depth: int | None, value: float, peers: list[Peer]
    ) -> str | None:
        """Why the trial should stop at ``epoch`` with best ``value`` so far; None to go on."""
        if epoch <= self.warmup_epochs:
            return None
        completed = [p for p in peers if p.status == "completed"]
        values, where = _yardstick(completed, objective, epoch, stage, depth, self.min_trials)
        if len(values) < self.min_trials:
            return None
        median = statistics.median(values)
        if not clearly_better(objective, median, value):
            return None
        return (
            f"{objective.name} {value:.4f} is worse than the median {median:.4f} of {len(values)} completed "
            f"trials{where} at epoch {epoch}"
        )


@dataclass(frozen=True)
class Asha:
    """Asynchronous successive halving: past each rung only the top 1/reduction_factor go on."""

    warmup_epochs: int
    reduction_factor: int
    min_trials: int
    name: str = "asha"

    def is_rung(self, epoch: int) -> bool:
        rung = self.warmup_epochs
        while rung < epoch:
            rung *= self.reduction_factor
        return rung == epoch

    def verdict(
        self, objective: Objective, epoch: int, stage: str, depth: int | None, value: float, peers: list[Peer]
    ) -> str | None:
        """Why the trial should stop at ``epoch`` with best ``value`` so far; None to go on."""
        if not self.is_rung(epoch):
            return None
        values, where = _yardstick(peers, objective, epoch, stage, depth, self.min_trials)
        if len(values) < self.min_trials:
            return None
        ranked = sorted([*values, value], reverse=not objective.minimise)
        kept = max(len(ranked) // self.reduction_factor, 1)
        threshold = ranked[kept - 1]
        if not clearly_better(objective, threshold, value):
            return None
        return (
            f"{objective.name} {value:.4f} is not in the top {kept} of the {len(ranked)} trials{where} at the "
            f"rung of epoch {epoch} (needed {threshold:.4f})"
        )


Pruner = Median | Asha


def make_pruner(pruning: PruningSpec) -> Pruner | None:
    """The ``pruning`` group's rule; None for ``pruning=none``."""
    if pruning.rule == "median":
        return Median(pruning.warmup_epochs, pruning.min_trials)
    if pruning.rule == "asha":
        return Asha(pruning.warmup_epochs, pruning.reduction_factor, pruning.min_trials)
    return None


@dataclass(frozen=True)
class StopRules:
    """What may end a trial early besides its own patience: the job's pruning rule, compared with the other
    trials in ``job_dir``, and the deadline (``time.monotonic()``) of the job's budget."""

    pruner: Pruner | None = None
    deadline: float | None = None
    job_dir: Path | None = None
    trial_id: str | None = None

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


class EarlyStop(keras.callbacks.Callback):
    """Stops a stage (patience) or the trial (pruning, budget) at an epoch's end; ``events`` says why.
    In every trial and finalist run, so it is also where a swallowed Ctrl-C is noticed.

    Put it after the callbacks that add the validation scores and keep the best epoch.
    """

    def __init__(self, objective: Objective, patience: int | None, rules: StopRules, depth: int | None) -> None:
        super().__init__()
        self.objective, self.patience, self.rules, self.depth = objective, patience, rules, depth
        self.events: list[Stop] = []
        self.stage = "head"
        self._best: float | None = None  # the trial's best so far, both stages
        self._stage_best: float | None = None
        self._since = 0
        self._stage_end = self._trial_end = 0

    def begin_stage(self, stage: str, stage_end: int, trial_end: int) -> None:
        """A stage starts that ends after epoch ``stage_end``, in a trial that ends after ``trial_end``:
        nothing is stopped at an epoch where it ends anyway."""
        self.stage, self._stage_best, self._since = stage, None, 0
        self._stage_end, self._trial_end = stage_end, trial_end

    @property
    def ends_trial(self) -> bool:
        """Whether the trial stops (pruned, or out of time), not only its stage."""
        return any(e.by in ("pruned", "budget") for e in self.events)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        interrupt.check()  # a Ctrl-C that library code swallowed stops the trial here
        value = (logs or {}).get(self.objective.name)
        if value is None or not math.isfinite(value):
            return
        value, epoch = float(value), epoch + 1
        if self._best is None or self.objective.better(value, self._best):
            self._best = value
        if self._stage_best is None or self.objective.better(value, self._stage_best):
            self._stage_best, self._since = value, 0
        else:
            self._since += 1
        rules = self.rules
        if epoch >= self._trial_end:  # the trial ends here anyway
            return
        if rules.pruner is not None and rules.job_dir is not None:
            peers = read_peers(rules.job_dir, self.objective, exclude=rules.trial_id)
            why = rules.pruner.verdict(self.objective, epoch, self.stage, self.depth, self._best, peers)
            if why:
                return self._stop("pruned", epoch, why, rule=rules.pruner.name)
        if rules.spent():
            return self._stop("budget", epoch, "the job's time budget is spent")
        if self.patience and self._since >= self.patience and epoch < self._stage_end:
            self._stop("patience", epoch, f"no better {self.objective.name} for {self.patience} epochs")

    def _stop(self, by: str, epoch: int, why: str, rule: str | None = None) -> None:
        self.events.append(Stop(by, epoch, self.stage, why, rule))
        self.model.stop_training = True
