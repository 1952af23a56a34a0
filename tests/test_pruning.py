"""Stopping early: pruning rules on made-up histories, patience, the time budget, and a pruned search
killed and resumed."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_image_folder, make_spec, run_cli, start_cli, stop_when

from tlsweep.errors import TlsweepError
from tlsweep.objective import Objective
from tlsweep.records import Stop
from tlsweep.schedule import budget_seconds
from tlsweep.stopping import Asha, EarlyStop, Median, Peer, StopRules, read_peers

ACCURACY, LOSS = Objective("val_accuracy"), Objective("val_loss")


def peer(values: list[float], status: str = "completed", depth: int = 0, head: int = 2, name: str = "p") -> Peer:
    """A trial whose objective was ``values`` at epochs 1, 2, …; its first ``head`` epochs are stage 1."""
    epochs = {e: ("head" if e <= head else "finetune", v) for e, v in enumerate(values, 1)}
    return Peer(name, status, depth, epochs)


def test_median_prunes_a_trial_worse_than_the_median_of_completed_trials_at_its_epoch() -> None:
    rule = Median(warmup_epochs=1, min_trials=3)
    peers = [peer([0.5, 0.6, 0.7]), peer([0.4, 0.7, 0.8]), peer([0.3, 0.5, 0.9])]
    assert rule.verdict(ACCURACY, 1, "head", 0, 0.1, peers) is None  # warm-up: never at epoch 1
    why = rule.verdict(ACCURACY, 2, "head", 0, 0.55, peers)  # the median at epoch 2 (best so far) is 0.6
    assert why and "median 0.6000 of 3 completed trials at epoch 2" in why
    assert rule.verdict(ACCURACY, 2, "head", 0, 0.6, peers) is None  # equal to the median: goes on
    running = [*peers[:2], peer([0.9, 0.9, 0.9], status="running")]  # only completed trials count
    assert rule.verdict(ACCURACY, 2, "head", 0, 0.1, running) is None  # two completed: fewer than min_trials
    short = [*peers[:2], peer([0.9])]  # a trial that never reached epoch 2 is no yardstick there
    assert rule.verdict(ACCURACY, 2, "head", 0, 0.1, short) is None


def test_a_trial_tied_with_the_median_goes_on_although_float32_rounding_puts_it_a_hair_below() -> None:
    # 558, 560 and 562 right of 584 validation images, as float32 metrics are recorded: the median of the two
    # completed trials is exactly 560/584, yet their float mean reads a hair above the float32 value 560/584.
    at_558, at_560, at_562 = (float(np.float32(k / 584)) for k in (558, 560, 562))
    peers = [peer([0.5, at_558], name="a"), peer([0.5, at_562], name="b")]
    assert statistics.median([at_558, at_562]) > at_560  # what a strict comparison would prune on
    assert Median(warmup_epochs=1, min_trials=2).verdict(ACCURACY, 2, "head", 0, at_560, peers) is None
    assert Median(warmup_epochs=1, min_trials=2).verdict(ACCURACY, 2, "head", 0, float(np.float32(559 / 584)), peers)
    asha = Asha(warmup_epochs=1, reduction_factor=3, min_trials=2)  # the top 1 of 3 at the rung of epoch 3
    tied = [peer([0.5, 0.6, at_560 + 1e-8], name="c"), peer([0.5, 0.6, 0.5], name="d")]
    assert asha.verdict(ACCURACY, 3, "head", 0, at_560, tied) is None


def test_median_judges_a_loss_downwards_and_stage_two_against_the_same_depth_when_there_are_enough() -> None:
    rule = Median(warmup_epochs=1, min_trials=2)
    losses = [peer([1.0, 0.5]), peer([1.0, 0.7]), peer([1.0, 0.9])]
    assert rule.verdict(LOSS, 2, "head", 0, 0.6, losses) is None  # below the median loss 0.7: better
    assert "worse than the median 0.7000" in (rule.verdict(LOSS, 2, "head", 0, 0.8, losses) or "")

    shallow = [peer([0.5, 0.6, 0.62], depth=0, head=2, name=f"s{i}") for i in range(3)]
    deep = [peer([0.5, 0.6, 0.9], depth=54, head=2, name=f"d{i}") for i in range(2)]
    # At depth 54 in stage 2, the two depth-54 trials are the yardstick (median 0.9), not all five (0.62).
    assert "at depth 54" in (rule.verdict(ACCURACY, 3, "finetune", 54, 0.8, shallow + deep) or "")
    assert rule.verdict(ACCURACY, 3, "finetune", 0, 0.8, shallow + deep) is None  # depth 0's median is 0.62
    lonely = Median(warmup_epochs=1, min_trials=3)  # too few depth-54 trials: every trial at epoch 3 counts
    assert rule.verdict(ACCURACY, 3, "finetune", 54, 0.7, shallow + deep[:1]) is None
    assert "median 0.6200 of 4 completed trials at epoch 3" in (
        lonely.verdict(ACCURACY, 3, "finetune", 54, 0.5, shallow + deep[:1]) or ""
    )


def test_asha_keeps_the_top_third_at_each_rung_of_epochs() -> None:
    rule = Asha(warmup_epochs=1, reduction_factor=3, min_trials=3)
    assert [e for e in range(1, 20) if rule.is_rung(e)] == [1, 3, 9]
    others = [peer([v, v, v], status=s) for v, s in [(0.9, "completed"), (0.8, "pruned"), (0.7, "running")]]
    assert rule.verdict(ACCURACY, 2, "head", 0, 0.1, others) is None  # not a rung
    # Four trials at the rung of epoch 3 (every status counts): the top 4 // 3 = 1 goes on.
    why = rule.verdict(ACCURACY, 3, "head", 0, 0.85, others)
    assert why and "not in the top 1 of the 4 trials" in why and "needed 0.9000" in why
    assert rule.verdict(ACCURACY, 3, "head", 0, 0.95, others) is None
    assert rule.verdict(ACCURACY, 3, "head", 0, 0.1, others[:2]) is None  # fewer than min_trials there


def test_patience_ends_a_stage_and_pruning_or_the_budget_end_the_trial(tmp_path: Path) -> None:
    class Model:
        stop_training = False

    stop = EarlyStop(ACCURACY, patience=2, rules=StopRules(), depth=0)
    stop.set_model(Model())
    stop.begin_stage("head", 10, 20)
    for epoch, value in enumerate([0.5, 0.6, 0.55, 0.58]):
        stop.on_epoch_end(epoch, {"val_accuracy": value})
    assert stop.model.stop_training and not stop.ends_trial  # stage 2 still runs
    assert stop.events == [Stop("patience", 4, "head", "no better val_accuracy for 2 epochs")]

    spent = EarlyStop(ACCURACY, None, StopRules(deadline=0.0), depth=0)  # a deadline long past
    spent.set_model(Model())
    spent.begin_stage("head", 10, 20)
    spent.on_epoch_end(0, {"val_accuracy": 0.5})
    assert spent.ends_trial and spent.events[0].by == "budget"

    trials = tmp_path / "trials"
    trials.mkdir()
    for i, values in enumerate([[0.8, 0.9], [0.7, 0.9], [0.9, 0.95]]):
        history = [{"epoch": e, "stage": "head", "val_accuracy": v} for e, v in enumerate(values, 1)]
        record = {
            "trial_id": str(i),
            "status": "completed",
            "objective": "val_accuracy",
            "hyperparameters": {"finetune.unfreeze_depth": 0},
        }
        (trials / f"trial_{i}.json").write_text(json.dumps({**record, "history": history}))
    assert len(read_peers(tmp_path, ACCURACY, exclude="2")) == 2
    rules = StopRules(Median(1, 3), job_dir=tmp_path, trial_id="3")
    pruned = EarlyStop(ACCURACY, None, rules, depth=0)
    pruned.set_model(Model())
    pruned.begin_stage("head", 10, 20)
    pruned.on_epoch_end(0, {"val_accuracy": 0.1})  # the warm-up epoch
    assert not pruned.events
    pruned.on_epoch_end(1, {"val_accuracy": 0.2})
    assert pruned.ends_trial and pruned.events[0].rule == "median" and pruned.events[0].epoch == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("budget=10 minutes", "is not a duration; use e.g. budget=90s"),
        ("pruning.rule=halving", "pruning.rule=halving must be one of: none, median, asha"),
        ("finetune.patience=0", "finetune.patience=0 must be at least 1"),
    ],
)
def test_bad_stopping_settings_are_one_line(override: str, message: str) -> None:
    with pytest.raises(TlsweepError, match=message):
        make_spec([override])


def test_budgets_read_as_durations() -> None:
    assert [budget_seconds(b) for b in ("90s", "30m", "2h", "1h30m", 45, None)] == [90, 1800, 7200, 5400, 45, None]
    with pytest.raises(TlsweepError, match="Hyperband stops trials early itself"):
        make_spec(["pruning=median", "tuner=hyperband"])


def test_a_spent_budget_stops_the_search_with_its_records_intact(image_folder: Path, tmp_path: Path) -> None:
    from tlsweep.job import run_job

    overrides = ["dataset=folder", f"dataset.path={image_folder}", *FAST, "tuner.max_trials=20"]
    cfg = make_spec([*overrides, "finetune.head_epochs=3", "budget=1s"])
    cfg = dataclasses.replace(cfg, budget=1e-6)  # spent before the first epoch ends, however fast the machine
    record = run_job(cfg, tmp_path / "job", {})
    assert record.get("stopped_by_budget") and record.get("trials") == 1  # the first trial always runs
    (trial,) = [json.loads(p.read_text()) for p in (tmp_path / "job" / "trials").glob("*.json")]
    assert trial["status"] == "completed" and len(trial["history"]) == 1  # stopped at its first epoch's end
    assert trial["stopped"] == [{"by": "budget", "epoch": 1, "stage": "head", "why": "the job's time budget is spent"}]
    assert json.loads((tmp_path / "job" / "best.json").read_text())["trial_id"] == trial["trial_id"]


def test_a_resumed_job_counts_what_its_earlier_runs_spent_against_the_budget(
    image_folder: Path, tmp_path: Path
) -> None:
    from tlsweep.job import run_job

    overrides = ["dataset=folder", f"dataset.path={image_folder}", *FAST, "tuner.max_trials=20"]
    job = tmp_path / "job"
    spent = dataclasses.replace(make_spec([*overrides, "budget=1s"]), budget=1e-6)
    run_job(spent, job, {})  # one trial, then the budget is spent
    (path,) = list((job / "trials").glob("trial_*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "duration_s": 3600.0}))  # as if it took an hour
    record = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps({**record, "status": "interrupted"}))  # as if killed after it
    resumed = run_job(make_spec([*overrides, "budget=30m", f"resume={job}"]), job, {})
    assert resumed.get("stopped_by_budget") and resumed.get("trials") == 1  # no new trial: the hour is spent


def test_patience_ends_stage_one_and_stage_two_keeps_its_place_on_the_epoch_axis(
    image_folder: Path, tmp_path: Path
) -> None:
    from tlsweep.job import run_job

    still = ["search.params.finetune.learning_rate=1e-9"]  # nothing changes: no progress
    overrides = ["dataset=folder", f"dataset.path={image_folder}", *FAST, "tuner.max_trials=1", *still]
    cfg = make_spec([*overrides, "finetune.head_epochs=6", "finetune.finetune_epochs=2", "finetune.patience=1"])
    run_job(cfg, tmp_path / "job", {})
    (trial,) = [json.loads(p.read_text()) for p in (tmp_path / "job" / "trials").glob("*.json")]
    # Stage 1 stops after one epoch without progress; stage 2 still runs, at its usual epochs (7 and 8), and
    # is not said to stop at its last epoch.
    assert [(e["epoch"], e["stage"]) for e in trial["history"]] == [(1, "head"), (2, "head"), (7, "finetune")] + [
        (8, "finetune")
    ]
    assert [(e["by"], e["stage"], e["epoch"]) for e in trial["stopped"]] == [("patience", "head", 2)]
    assert trial["status"] == "completed"


@pytest.mark.slow
def test_a_pruned_search_killed_mid_trial_resumes_without_losing_or_repeating_a_trial(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images")
    total = 8  # the first is pruned in the 4th: the kill has several trials to land in
    args = ["dataset=folder", f"dataset.path={images}", *FAST, f"tuner.max_trials={total}", "finetune.head_epochs=3"]
    args += ["pruning=median", "pruning.warmup_epochs=1", "pruning.min_trials=1"]
    process = start_cli(args, tmp_path)

    def records() -> dict[str, dict]:
        found = {}
        for path in tmp_path.glob("outputs/runs/*/trials/trial_*.json"):
            try:
                found[path.name] = json.loads(path.read_text())
            except ValueError:
                continue
        return found

    def pruned_then_mid_trial() -> bool:  # and not the last trial: the kill must land before the job ends
        found = records()
        running = [r for r in found.values() if r["status"] == "running" and r["history"]]
        return "pruned" in [r["status"] for r in found.values()] and bool(running) and len(found) < total

    stop_when(process, pruned_then_mid_trial)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    done = [name for name, record in records().items() if record["status"] != "running"]
    finished = {name: (run / "trials" / name).stat().st_mtime_ns for name in done}
    resumed = run_cli([*args, f"resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout

    final = records()
    assert sorted(final) == [f"trial_{i}.json" for i in range(total)]  # every trial once, none lost
    assert {p.name: p.stat().st_mtime_ns for p in (run / "trials").iterdir() if p.name in finished} == finished
    assert {r["status"] for r in final.values()} == {"completed", "pruned"}
    for record in final.values():
        if record["status"] == "pruned":
            (event,) = [e for e in record["stopped"] if e["by"] == "pruned"]
            assert event["rule"] == "median" and len(record["history"]) == event["epoch"]
    job = json.loads((run / "job.json").read_text())
    pruned_ids = {r["trial_id"] for r in final.values() if r["status"] == "pruned"}
    assert job["pruned_trials"] == len(pruned_ids) and job["best"]["trial_id"] not in pruned_ids
    assert f"{total - len(pruned_ids)} of {total} trials completed, {len(pruned_ids)} pruned" in resumed.stdout

    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert {r["trial"] for r in rows if r["status"] == "pruned"} == pruned_ids
    assert all(r["stopped"].startswith("pruned at epoch") for r in rows if r["status"] == "pruned")
    assert all(r["rank"] == "" for r in rows if r["status"] == "pruned")  # never ranked, never a finalist
    assert 'class="pruned"' in (run / "report.html").read_text()

    from test_search import hparams_session

    some = next(r for r in final.values() if r["status"] == "pruned")
    metrics = hparams_session(run / some["tensorboard"])["metrics"]
    assert metrics["pruned"][1] == 1.0 and metrics["epochs_trained"][1] == len(some["history"])
