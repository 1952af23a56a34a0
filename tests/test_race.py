"""The race sweeper: a multirun raced as successive halving, from its decisions to whole races on the demo."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, start_cli, stop_when

from tlsweep import files
from tlsweep.objective import Objective
from tlsweep.race import Entry, Lap, Race, Result, decide, rounds_for, trials_in_round
from tlsweep.records import JobRecord, write_job
from tlsweep.results import load_sweep, winner

ACCURACY, LOSS = Objective("val_accuracy"), Objective("val_loss")


def test_rounds_halve_the_jobs_until_one_is_left() -> None:
    assert [rounds_for(n, 3) for n in (1, 2, 3, 4, 8, 9, 27)] == [1, 2, 2, 2, 3, 3, 4]
    assert [rounds_for(n, 2) for n in (2, 4, 8)] == [2, 3, 4]
    # 10 trials over 3 rounds: 2 (10/9, at least 2), then 4 (10/3), then all 10; never more than there are
    assert [trials_in_round(10, r, 3, 3) for r in (1, 2, 3)] == [2, 4, 10]
    assert trials_in_round(1, 1, 3, 3) == 1


def test_the_best_third_goes_on_and_so_does_a_job_within_noise_of_the_cut() -> None:
    results = [Result("a", 0.90, 400), Result("b", 0.70, 400), Result("c", 0.89, 400), Result("d", 0.60, 400),
               Result("e", 0.75, 400), Result("f", None)]  # fmt: skip
    verdicts = {v.name: v for v in decide(results, ACCURACY, 3)}
    # five scored jobs keep one (5 // 3); c is 0.01 behind a, within 1.96·√(0.9·0.1/400 + 0.89·0.11/400) = 0.042
    assert [n for n, v in verdicts.items() if v.goes_on] == ["a", "c"]
    assert "within seed noise of the cut 0.9000" in verdicts["c"].why
    assert "behind the cut 0.9000 by more than seed noise" in verdicts["b"].why
    assert verdicts["f"].why.startswith("failed") and not verdicts["f"].goes_on
    on_few_images = {v.name for v in decide([Result("a", 0.9, 20), Result("b", 0.8, 20)], ACCURACY, 3) if v.goes_on}
    assert on_few_images == {"a", "b"}  # 20 images cannot tell 0.9 from 0.8
    losses = decide([Result("a", 0.30), Result("b", 0.50), Result("c", 0.305)], LOSS, 3)  # lower is better
    assert [v.goes_on for v in losses] == [True, False, True]  # c is within 1.96·√(0.006² + 0.0061²) of a
    assert LOSS.noise(0.5, None) == pytest.approx(0.01)


def test_a_round_runs_only_the_jobs_that_would_add_trials_or_have_not_run_it(tmp_path: Path) -> None:
    """Made-up job records: a job that ran this round before the race was stopped is not run again, and a job
    this round would give no more trials is decided on its last result — in two idle rounds in a row too."""

    def paused(name: str, round_: int, trials: int, total: int, **more: Any) -> None:
        race = {"round": round_, "rounds": 4, "trials": trials, "search_trials": total}
        summary = {"best": {"value": 0.9}, "val_images": 100, "trials": trials, "race": race, **more}
        write_job(tmp_path / name, JobRecord(name, "paused", summary=summary))

    # 2 trials over 4 rounds of eta 2: rounds 1-3 all allow 2; 20 trials: 3, then 5, then 10
    race = Race(2, 4, "val_accuracy", 3, [Entry(n, []) for n in ("idle", "grows", "ran", "killed", "new")])
    paused("idle", 1, 2, 2)  # last ran in round 1, idle in round 2, and round 3 still adds nothing
    paused("grows", 2, 5, 20)  # round 3 allows 10
    paused("ran", 3, 10, 20)  # ran round 3 before the race was stopped
    write_job(tmp_path / "killed", JobRecord("killed", "running"))  # stopped mid-round: runs it again
    paused("spent", 2, 3, 20, stopped_by_budget=True)  # its time budget stopped its search: no more trials
    race.entries.append(Entry("spent", []))
    known, idle = race.known_results(tmp_path)
    assert sorted(known) == ["idle", "ran", "spent"] and idle == ["idle", "spent"]
    assert known["idle"]["value"] == 0.9 and known["ran"]["trials"] == 10
    race.round = 4  # the last round runs every job still racing: all its trials and its finalists
    assert race.known_results(tmp_path) == ({}, [])


def test_a_finished_job_says_how_many_trials_it_ran_and_whether_its_budget_stopped_it(tmp_path: Path) -> None:
    race = Race(3, 2, "val_accuracy", 2, [Entry("a", [], [Lap(1, 2, 0.8)]), Entry("b", [], [Lap(1, 2, 0.7)])])
    last = {"status": "completed", "val_images": 100, "search_trials": 6}
    returned = [{**last, "job": "a", "value": 0.9, "trials": 2, "stopped_by_budget": True},
                {**last, "job": "b", "value": 0.8, "trials": 6}]  # fmt: skip
    race.finish_round(race.racing(), returned, tmp_path)
    assert race.lines() == [
        "a: ran to the end (2 rounds, 2 trials); the budget stopped it at 2 of 6 trials",
        "b: ran to the end (2 rounds, 6 trials)",
    ]


# Four jobs: the demo's pretrained backbone, or the same network from random weights, on all or half the images.
RACE = ["-m", "hydra/sweeper=race", "backbone.weights=bundled,null", "dataset.fraction=1.0,0.5"]
TINY = ["finetune.head_epochs=3", "finetune.finetune_epochs=1", "tuner.max_trials=3",
        "search.params.finetune.learning_rate=tag(log, interval(1e-3, 1e-2))", "search.params.finetune.optimizer=adam",
        "search.params.finetune.unfreeze_depth=choice(0, 5)", "finalists.top=1", "finalists.seeds=2",
        "verbose=false"]  # fmt: skip


def check_race(root: Path, output: str) -> Race:
    """A finished race: the jobs of random weights were stopped in round 1 and kept as they were; the race's
    winner ran everything; the report, trials.csv and the terminal say what the race did."""
    race = Race.load(root)
    assert race is not None and race.rounds == 2 and race.round == 3, race
    fates = {e.name: e.fate for e in race.entries}
    random_weights = [name for name in fates if "weights=null" in name]
    assert len(random_weights) == 2 and {fates[name] for name in random_weights} == {"stopped"}
    slow = random_weights[0]
    sweep = load_sweep(root)
    jobs = {j.name: j for j in sweep.jobs}
    assert jobs[slow].status == "stopped" and len([t for t in jobs[slow].trials if t.run.is_search]) == 2
    found = winner(sweep)
    assert fates[found.job.name] == "finished" and found.group is not None  # its finalists ran
    assert jobs[found.job.name].status == "completed" and len(jobs[found.job.name].trials) >= 3
    stopped_line = race.entries[[e.name for e in race.entries].index(slow)].line(race.rounds)
    assert f"{slow}: {stopped_line}" in output  # the terminal
    assert stopped_line in (root / "report.md").read_text() and "## Race: 2 rounds" in (root / "report.md").read_text()
    assert stopped_line in (root / "trials.csv").read_text()
    assert stopped_line in (root / files.LOG_FILE).read_text()  # the sweep's log keeps the race's lines, timed
    assert "Traceback" not in output and "error:" not in output
    assert "did not keep its weights" not in output  # the winner's earlier rounds kept them on disk
    assert not list(root.glob(f"*/{files.KEPT_DIR}"))  # let go: by a stopped job, and once the winner is saved
    return race


@pytest.mark.slow
def test_a_race_killed_between_rounds_resumes_in_the_round_it_was_in(tmp_path: Path) -> None:
    process = start_cli([*RACE, *TINY], tmp_path)

    def round_two() -> bool:
        race = next(iter(tmp_path.glob("outputs/sweeps/*/race.json")), None)
        return race is not None and json.loads(race.read_text())["round"] == 2

    stop_when(process, round_two, signal.SIGKILL)
    (root,) = (tmp_path / "outputs" / "sweeps").iterdir()
    trials_before = {p: p.stat().st_mtime for p in root.glob("*/trials/trial_*.json")}
    result = run_cli([*RACE, *TINY, "resume=true"], tmp_path)
    assert result.returncode == 0, result.stdout
    race = check_race(root, result.stdout)
    assert all(len(e.laps) == (2 if e.fate == "finished" else 1) for e in race.entries)  # round 1 ran once
    stopped = {e.name for e in race.entries if e.fate == "stopped"}
    for path, mtime in trials_before.items():  # the stopped jobs' trials were not run again
        if path.parent.parent.name in stopped:
            assert path.stat().st_mtime == mtime


@pytest.mark.slow
def test_a_race_under_the_parallel_launcher_stops_the_weak_jobs_after_their_first_round(tmp_path: Path) -> None:
    launcher = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "threads=1"]
    result = run_cli([*RACE, *TINY, *launcher], tmp_path)
    assert result.returncode == 0, result.stdout
    (root,) = (tmp_path / "outputs" / "sweeps").iterdir()
    check_race(root, result.stdout)
    assert f"best: {winner(load_sweep(root)).job.name} " in result.stdout


@pytest.mark.slow
def test_a_round_that_would_add_no_trials_runs_no_job(tmp_path: Path) -> None:
    """With 2 trials and 3 rounds (eta 2), round 2 allows no more trials than round 1: its jobs are decided on
    their round-1 results instead of being started again to return the same values."""
    result = run_cli([*RACE, *TINY, "tuner.max_trials=2", "hydra.sweeper.eta=2"], tmp_path)
    assert result.returncode == 0, result.stdout
    (root,) = (tmp_path / "outputs" / "sweeps").iterdir()
    race = Race.load(root)
    assert race is not None and race.rounds == 3 and race.round == 4, race
    idle = re.search(r"race round 2 of 3: (\d) job\(s\) \((\d) would run no more trials: decided on", result.stdout)
    assert idle and idle.group(1) == idle.group(2), result.stdout  # every job of round 2 is decided, none started
    logs = "".join(p.read_text() for p in root.glob(f"*/{files.LOG_FILE}"))
    assert "race round 1 of 3 done" in logs and "race round 2 of 3 done" not in logs
    finished = [e for e in race.entries if e.fate == "finished"]
    assert finished and all([lap.round for lap in e.laps] == [1, 2, 3] for e in finished)
    assert winner(load_sweep(root)).group is not None  # the last round ran the winner's finalists
