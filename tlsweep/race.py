"""The race: successive halving over the jobs of a multirun, decided from what each job returns.

Round 1 runs every job with a few trials and no finalists; after each round the best ``1/eta`` of
the jobs (at least one) go on with more trials — and so does a job within measurement noise of the
cut —, and the last round's jobs finish their ``tuner.max_trials`` and their finalists. The Hydra
sweeper (``hydra_plugins/tlsweep_race_sweeper``) hands each round to the configured launcher; this
module decides, from the jobs' results alone, so its decisions are unit-tested on made-up results.
Its state (``race.json`` in the sweep's folder) lets ``resume=true`` continue a race in its round.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.objective import Objective
from tlsweep.progress import count
from tlsweep.records import RecordError, read_job, read_json, write_job

RACE_RECORD = "race.json"


def rounds_for(jobs: int, eta: int) -> int:
    """How many rounds ``jobs`` need: each keeps the best ``1/eta`` (at least one) until one is left."""
    rounds = 1
    while jobs > 1:
        jobs, rounds = max(1, jobs // eta), rounds + 1
    return rounds


def trials_in_round(total: int, round_: int, rounds: int, eta: int) -> int:
    """The trials a job has run by the end of ``round_``: ``total / eta`` per round left, at least two."""
    return min(total, max(2, math.ceil(total / eta ** (rounds - round_))))


@dataclass(frozen=True)
class Result:
    """What a job returned at the end of a round: its best trial's value, on how many validation images."""

    name: str
    value: float | None  # None: the job failed
    images: int | None = None


@dataclass(frozen=True)
class Verdict:
    name: str
    goes_on: bool
    why: str


def decide(results: list[Result], objective: Objective, eta: int) -> list[Verdict]:
    """Which jobs go on: the best ``len/eta`` (at least one), and any job within noise of the cut — two
    measurements differ by more than ``Objective.margin`` only one time in twenty."""
    scored = sorted((r for r in results if r.value is not None), key=lambda r: objective.key(r.value))  # type: ignore
    keep = max(1, len(scored) // eta)
    verdicts = [Verdict(r.name, False, "failed: it returned no result") for r in results if r.value is None]
    if not scored:
        return verdicts
    cut = scored[keep - 1]
    for rank, result in enumerate(scored, 1):
        value = float(result.value)  # type: ignore[arg-type]
        margin = objective.margin(value, float(cut.value), result.images, cut.images)  # type: ignore[arg-type]
        if rank <= keep:
            verdicts.append(Verdict(result.name, True, f"{value:.4f}, in the top {keep} of {len(scored)}"))
        elif abs(value - float(cut.value)) <= margin:  # type: ignore[arg-type]
            why = f"{value:.4f}, within seed noise of the cut {cut.value:.4f} (±{margin:.4f})"
            verdicts.append(Verdict(result.name, True, why))
        else:
            why = f"{value:.4f}, behind the cut {cut.value:.4f} by more than seed noise (±{margin:.4f})"
            verdicts.append(Verdict(result.name, False, why))
    return sorted(verdicts, key=lambda v: [r.name for r in results].index(v.name))


@dataclass
class Lap:
    """One round of one job: the trials it had run by its end, and its best value then."""

    round: int
    trials: int | None
    value: float | None
    why: str = ""


@dataclass
class Entry:
    """A job in the race: its overrides, its folder, its rounds, and its fate."""

    name: str
    overrides: list[str]
    laps: list[Lap] = field(default_factory=list)
    fate: str = "racing"  # racing | stopped (by the race) | finished (ran the last round) | failed

    @property
    def stopped_in(self) -> int | None:
        return self.laps[-1].round if self.fate in ("stopped", "failed") and self.laps else None

    def line(self, rounds: int) -> str:
        """What happened to the job, in one line: the report, trials.csv and the terminal say the same."""
        if not self.laps:
            return "not run yet"
        lap = self.laps[-1]
        trials = [count(lap.trials, "trial")] if lap.trials else []  # unknown when the job failed
        if self.fate == "finished":
            ran = ", ".join([count(rounds, "round"), *trials])
            return f"ran to the end ({ran})" + (f"; {lap.why}" if lap.why else "")
        state = {"stopped": "stopped", "failed": "failed", "racing": "racing"}[self.fate]
        ran = "".join(f" ({t})" for t in trials)
        return f"{state} after round {lap.round} of {rounds}{ran}: {lap.why}".rstrip(": ")


@dataclass
class Race:
    """The race's state, written to ``race.json`` after every round."""

    eta: int
    rounds: int
    objective: str
    round: int = 1  # the round running, or next
    entries: list[Entry] = field(default_factory=list)

    def racing(self) -> list[Entry]:
        return [e for e in self.entries if e.fate == "racing"]

    def save(self, root: Path) -> None:
        files.write_json(Path(root) / RACE_RECORD, dataclasses.asdict(self))

    @classmethod
    def load(cls, root: Path) -> Race | None:
        """The race in ``root``; None if there is none; RecordError naming ``race.json`` if it is damaged."""
        data = read_json(Path(root) / RACE_RECORD)
        if data is None:
            return None
        try:
            entries = [
                Entry(str(e["name"]), [str(o) for o in e["overrides"]], [Lap(**lap) for lap in e.get("laps", [])],
                      str(e.get("fate", "racing")))  # fmt: skip
                for e in data["entries"]
            ]
            return cls(int(data["eta"]), int(data["rounds"]), str(data["objective"]), int(data["round"]), entries)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RecordError(f"{RACE_RECORD} is not a race record ({type(e).__name__}: {e})") from None

    def lines(self) -> list[str]:
        return [f"{e.name}: {e.line(self.rounds)}" for e in self.entries]

    def known_results(self, root: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The racing jobs this round need not start, with what they returned, and which of them are idle: a job
        that ran this round before the race was stopped; and, idle, one this round would give no more trials (a
        round can allow no more than the one before: few trials, many rounds) or whose time budget stopped its
        search. An idle job is decided on its last result."""
        known: dict[str, dict[str, Any]] = {}
        idle: list[str] = []
        for entry in self.racing():
            last = last_result(Path(root) / entry.name)
            if last is None:
                continue
            if last.get("round") == self.round:
                known[entry.name] = last
            elif self.round < self.rounds and not self._adds_trials(last):
                known[entry.name] = last
                idle.append(entry.name)
        return known, idle

    def _adds_trials(self, last: dict[str, Any]) -> bool:
        """Whether this round would give a job that returned ``last`` more trials: not once its budget is spent."""
        total, ran = last.get("search_trials"), last.get("trials")
        if last.get("stopped_by_budget"):
            return False
        if total is None or ran is None:
            return True
        return trials_in_round(int(total), self.round, self.rounds, self.eta) > int(ran)

    def finish_round(self, racing: list[Entry], returned: list[dict[str, Any] | None], root: Path) -> None:
        """Record what the round's jobs returned and decide which go on; a job the race stops says so in its
        ``job.json`` (status ``stopped``), and is kept as it is."""
        last = self.round >= self.rounds
        for entry, summary in zip(racing, returned, strict=True):
            entry.name = str((summary or {}).get("job") or entry.name)  # the job's own name for its folder
        results = [job_result(summary, entry.name) for entry, summary in zip(racing, returned, strict=True)]
        verdicts = {} if last else {v.name: v for v in decide(results, Objective(self.objective), self.eta)}
        for entry, result, summary in zip(racing, results, returned, strict=True):
            verdict = verdicts.get(entry.name)
            why = "; ".join(w for w in (verdict.why if verdict else "", _budget_note(summary)) if w)
            entry.laps.append(Lap(self.round, (summary or {}).get("trials"), result.value, why))
            if result.value is None:
                entry.fate = "failed"
            elif last:
                entry.fate = "finished"
            elif not verdict.goes_on:  # type: ignore[union-attr]
                entry.fate = "stopped"
                stop_job(Path(root) / entry.name, entry.line(self.rounds))
        self.round += 1


def last_result(job_dir: Path) -> dict[str, Any] | None:
    """What a job returned at the end of its last early round (its ``job.json``, status ``paused``), else None."""
    try:
        record = read_job(job_dir)
    except RecordError:
        return None
    return record.result() if record is not None and record.status == "paused" else None


def _budget_note(summary: dict[str, Any] | None) -> str:
    """Why a job ran fewer trials than the round allowed, if its time budget (``budget``) stopped its search."""
    if not isinstance(summary, dict) or not summary.get("stopped_by_budget"):
        return ""
    total = summary.get("search_trials")
    return f"the budget stopped it at {summary.get('trials')}{f' of {total}' if total else ''} trials"


def stop_job(job_dir: Path, why: str) -> None:
    """Mark a job the race stopped: kept as it is (records, TensorBoard runs, its best model), its status
    ``stopped``; only the weights it kept for finalists go, which no longer run."""
    shutil.rmtree(Path(job_dir) / files.KEPT_DIR, ignore_errors=True)
    try:
        record = read_job(job_dir)
    except RecordError:
        return
    if record is not None:
        record.status = "stopped"
        record.summary["race"] = {**(record.get("race") or {}), "stopped": why}
        write_job(job_dir, record)


def job_result(summary: dict[str, Any] | None, name: str) -> Result:
    """A job's result as the sweeper receives it (the job's return value; None if it failed)."""
    if not isinstance(summary, dict) or summary.get("value") is None or summary.get("status") == "failed":
        return Result(name, None)
    return Result(name, float(summary["value"]), summary.get("val_images"))
