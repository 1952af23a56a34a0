"""One path for every run: the seams where options met and broke, each closed by a shared mechanism."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_image_folder, make_spec

from tlsweep.groups import ExportSpec, hyperband_schedule
from tlsweep.objective import Objective
from tlsweep.records import RunRecord
from tlsweep.report.summary import summarize
from tlsweep.results import Sweep, finalist_groups, load_job, load_sweep, winner

ACCURACY = Objective("val_accuracy")
CHOICES = {"backbone": "tiny", "dataset": "folder"}


def write_run(job: Path, run_id: str, value: float | None, hyperparameters: dict, **extra) -> None:
    """A run record as the runner writes it: one epoch, kept."""
    history = [{"epoch": 1, "stage": "head", "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": value}]
    record = {"trial_id": run_id, "status": "completed", "objective": "val_accuracy",
              "hyperparameters": hyperparameters, "history": history, "best_epoch": 1, "stages": {},
              **extra}  # fmt: skip
    (job / "trials").mkdir(parents=True, exist_ok=True)
    (job / "trials" / f"trial_{run_id}.json").write_text(json.dumps(record))


def completed_job(job: Path, config: dict | None = None) -> None:
    (job / "job.json").write_text(json.dumps({"status": "completed", "config": config or {}}))


def three_seeds(job: Path, hp: dict) -> None:
    """trial_0 and its two finalist seeds: 0.90, 0.80 and 0.85 (mean 0.85, closest to it: trial_0.s2)."""
    write_run(job, "0", 0.90, hp)
    write_run(job, "0.s1", 0.80, hp, finalist_of="0", replicate=1)
    write_run(job, "0.s2", 0.85, hp, finalist_of="0", replicate=2)


def test_a_refit_ships_for_its_configuration_and_the_answer_stays_the_configurations_mean(tmp_path: Path) -> None:
    """finalists.refit=true crashed the report: the refit, which holds nothing out, was taken as the answer."""
    job = tmp_path / "job"
    hp = {"learning_rate": 0.01}
    three_seeds(job, hp)
    write_run(job, "0.refit", None, hp, refit_of="0", refit_from="0.s2", train_images=120)
    completed_job(job)
    found = winner(Sweep(job, [load_job(job)]), ACCURACY)
    assert found.value == pytest.approx(0.85) and found.run.trial_id == "0.s2" and found.model.trial_id == "0.refit"
    assert "(model: trial_0.refit" in found.line() and "0.8500 ±" in found.line()
    summary = summarize(load_sweep(job))
    assert summary.best["trial"] == "0.s2" and summary.best["val_accuracy"] == pytest.approx(0.85)
    refit_row = next(r for r in summary.table.rows if r["trial"] == "0.refit")
    assert refit_row["rank"] is None and refit_row["stopped"] == "refit on every image for 1 epochs"


def test_a_refit_of_another_run_does_not_stand_for_the_winner(tmp_path: Path) -> None:
    job = tmp_path / "job"
    hp = {"learning_rate": 0.01}
    three_seeds(job, hp)
    write_run(job, "0.refit", None, hp, refit_of="0", refit_from="0")  # made before the seeds changed the choice
    completed_job(job)
    found = winner(Sweep(job, [load_job(job)]), ACCURACY)
    assert found.model is found.run and found.run.trial_id == "0.s2"


def test_a_mean_over_seeds_compares_only_runs_of_the_full_schedule(tmp_path: Path) -> None:
    """Hyperband's search runs trained on its epoch budgets; a finalist's seeds train the full schedule."""
    job = tmp_path / "job"
    hp = {"learning_rate": 0.01}
    write_run(job, "0007", 0.95, hp, budget_epochs=4, initial_epoch=2, continues="0003")  # Hyperband's budget
    write_run(job, "0007.s0", 0.80, hp, finalist_of="0007")  # its own seed again, in full
    write_run(job, "0007.s1", 0.82, hp, finalist_of="0007", replicate=1)
    cut = [{"by": "budget", "epoch": 1, "stage": "head", "why": "the job's time budget is spent"}]
    write_run(job, "0007.s2", 0.40, hp, finalist_of="0007", replicate=2, stopped=cut)
    completed_job(job)
    (group,) = finalist_groups(load_job(job), ACCURACY)
    assert [r.trial_id for r in group.runs] == ["0007.s0", "0007.s1"] and group.mean == pytest.approx(0.81)


def test_exact_ties_are_broken_the_same_way_by_the_search_the_report_and_the_export(tmp_path: Path) -> None:
    """The best model kept while searching, the report's best and the export agree on a tie: a distributed
    search can finish trial 2 before trial 1 (the first seen used to win, the report took the lower number)."""
    from tlsweep.records import RunRecord
    from tlsweep.runs import BestModel

    job = tmp_path / "job"
    write_run(job, "2", 0.9, {"learning_rate": 0.02})
    write_run(job, "1", 0.9, {"learning_rate": 0.01})
    completed_job(job)

    class Model:
        def save(self, path) -> None:
            Path(path).write_bytes(b"model")

    best = BestModel(job, make_spec(), ["a", "b"])
    for run_id in ("2", "1"):  # the order they finished in
        best.offer(RunRecord.parse(json.loads((job / "trials" / f"trial_{run_id}.json").read_text())), Model())
    assert best.read()["trial_id"] == winner(load_sweep(job), ACCURACY).run.trial_id == "1"


def test_settings_that_change_results_are_part_of_a_jobs_identity() -> None:
    base = make_spec(["augmentation=light", "finalists.top=0"]).identity()
    for override in ("class_weight=balanced", "cache=false", "feature_cache.views=3", "feature_cache.dtype=float16",
                     "finalists.replicate=1"):  # fmt: skip
        assert make_spec(["augmentation=light", "finalists.top=0", override]).identity() != base, override
    assert make_spec(["augmentation=light", "tuner.max_trials=20", "finalists.top=5"]).identity() == base


@pytest.mark.parametrize(("max_epochs", "factor"), [(10, 3), (4, 3), (30, 3), (12, 2), (81, 3)])
def test_hyperbands_schedule_is_keras_tuners(max_epochs: int, factor: int) -> None:
    """``hyperband_schedule`` re-derives KerasTuner's oracle arithmetic: if KerasTuner changes it, this fails."""
    from keras_tuner.src.tuners.hyperband import HyperbandOracle

    oracle = HyperbandOracle(objective="val_accuracy", max_epochs=max_epochs, factor=factor)
    expected = []
    for bracket in reversed(range(oracle._get_num_brackets())):
        for rung in range(oracle._get_num_rounds(bracket)):
            initial = oracle._get_epochs(bracket, rung - 1) if rung else 0
            expected += [(oracle._get_epochs(bracket, rung), initial)] * oracle._get_size(bracket, rung)
    assert hyperband_schedule(max_epochs, factor, 1) == expected


def test_hyperband_counts_its_schedule_in_the_cache_plan_and_the_budget() -> None:
    """The cache plan took Hyperband's run count from tuner.max_trials (10), the budget as none at all."""
    spec = make_spec(["tuner=hyperband", "finetune.head_epochs=5", "finetune.finetune_epochs=5", "budget=10m"])
    work = spec.workload()
    schedule = hyperband_schedule(10, 3, 1)
    assert work.search_runs == pytest.approx(sum(e - i for e, i in schedule) / 10)
    assert work.later_runs == 3 * 2 + 3  # each finalist's two more seeds, and its own seed in full
    assert 0 < work.search_share < 1
    capped = make_spec(["tuner=hyperband", "tuner.max_trials=4"]).workload()  # a cap is honoured
    assert capped.search_runs == pytest.approx(4 * 2 / 10)


def job(tmp_path: Path, *overrides: str):
    from tlsweep.job import run_job

    images = tmp_path / "images"
    if not images.exists():
        make_image_folder(images)
    fast = [o for o in FAST if not o.startswith("finalists")]
    spec = make_spec(["dataset=folder", f"dataset.path={images}", *fast, *overrides])
    return run_job(spec, tmp_path / "job", CHOICES)


def exported(tmp_path: Path) -> dict:
    from tlsweep.export import export_best

    export_best(tmp_path / "job", ExportSpec(saved_model=False))
    return json.loads((tmp_path / "job" / "best" / "export.json").read_text())


def test_refit_without_finalists_retrains_the_best_trial(tmp_path: Path) -> None:
    """refit was skipped without a word when finalists.top=0."""
    job(tmp_path, "finalists.top=0", "finalists.refit=true")
    refit = [json.loads(p.read_text()) for p in (tmp_path / "job" / "trials").glob("*.refit.json")]
    assert len(refit) == 1 and refit[0]["status"] == "completed"
    assert exported(tmp_path)["trial"] == refit[0]["trial_id"]


def test_a_finalist_that_fails_for_any_reason_is_recorded_and_the_job_completes(tmp_path: Path, monkeypatch) -> None:
    """Only a diverged loss used to be caught in a finalist: anything else failed the finished job."""
    from tlsweep.trial import TwoStageTrial

    real_fit = TwoStageTrial.fit

    def fit(self, hp, model, trial_log=None, *args, **kwargs):
        if trial_log is not None and trial_log.record.trial_id.endswith(".s1"):
            raise RuntimeError("a bug, or a device that went away")
        return real_fit(self, hp, model, trial_log, *args, **kwargs)

    monkeypatch.setattr(TwoStageTrial, "fit", fit)
    record = job(tmp_path, "finalists.top=1", "finalists.seeds=3")
    assert record.status == "completed"
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "job" / "trials").glob("*.json")}
    failed = [r for r in runs.values() if r["trial_id"].endswith(".s1")]
    assert failed and failed[0]["status"] == "failed" and "a device that went away" in failed[0]["error"]
    assert exported(tmp_path)["trial"] == winner(load_sweep(tmp_path / "job")).model.trial_id


def test_a_finalist_the_budget_cuts_still_leaves_the_winner_exported(tmp_path: Path, monkeypatch) -> None:
    """A budget that cut a finalist short left best.keras on another run than the records' winner."""
    from tlsweep.runs import Runner
    from tlsweep.stopping import StopRules

    cut = {"on": False}
    real_spent = StopRules.spent

    def spent(self) -> bool:
        if self.trial_id and self.trial_id.endswith(".s2"):
            cut["on"] = True  # the budget runs out during the last finalist run
        return cut["on"] or real_spent(self)

    monkeypatch.setattr(StopRules, "spent", spent)
    monkeypatch.setattr(Runner, "out_of_time", lambda self: cut["on"])
    job(tmp_path, "tuner.max_trials=2", "finalists.top=2", "finalists.seeds=3", "budget=1h")
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "job" / "trials").glob("*.json")}
    assert any(r.get("stopped") and r["stopped"][0]["by"] == "budget" for r in runs.values())
    record = exported(tmp_path)
    found = winner(load_sweep(tmp_path / "job"))
    assert record["trial"] == found.model.trial_id
    assert record["finalist"] is None or record["finalist"]["mean"] == pytest.approx(found.value)


def test_a_resumed_job_rebuilds_its_winners_model_exactly_as_recorded(tmp_path: Path) -> None:
    """Killed after its finalists ran and before its model was kept: the winner's run is trained again, checked
    against its record (same kept epoch and value), and exported as the records name it."""
    job(tmp_path, "tuner.max_trials=2", "finalists.top=1", "finalists.seeds=3")
    folder = tmp_path / "job"
    found = winner(load_sweep(folder))
    record = json.loads((folder / "job.json").read_text())
    (folder / "job.json").write_text(json.dumps({**record, "status": "interrupted"}))
    for name in ("best.keras", "best.json"):  # as if the process died before keeping the winner's model
        (folder / name).unlink()
    job(tmp_path, "tuner.max_trials=2", "finalists.top=1", "finalists.seeds=3", f"resume={folder}")
    assert exported(tmp_path)["trial"] == found.model.trial_id == winner(load_sweep(folder)).model.trial_id


def test_finalists_run_side_by_side_and_stop_a_configuration_clearly_behind(tmp_path: Path) -> None:
    """Every finalist's second seed runs before any third; one whose interval is already below the leader's
    gets no more seeds (its verdict, behind the best, is settled)."""
    from tlsweep.finalists import run_finalists
    from tlsweep.runs import Outcome

    folder = tmp_path / "job"
    # trial_2's one run is within noise of the best (a finalist), its two seeds together clearly behind it
    values = {"0": [0.990, 0.988, 0.989], "1": [0.985, 0.990, 0.980], "2": [0.960, 0.958, 0.970]}
    for trial_id, runs in values.items():
        write_run(folder, trial_id, runs[0], {"learning_rate": float(trial_id) + 1})
    completed_job(folder)
    ran: list[str] = []

    class Runner:  # what run_finalists asks of the job's runner; each run scores as made up above
        spec = make_spec(["finalists.top=3", "finalists.seeds=3"])
        job_dir = folder

        def out_of_time(self) -> bool:
            return False

        def timing(self, planned: dict | None = None) -> str:
            return ""

        def run(self, plan) -> Outcome:
            ran.append(plan.run_id)
            value = values[plan.finalist_of][plan.replicate]
            write_run(folder, plan.run_id, value, plan.hyperparameters, finalist_of=plan.finalist_of,
                      replicate=plan.replicate)  # fmt: skip
            return Outcome(RunRecord.parse(json.loads((folder / "trials" / f"trial_{plan.run_id}.json").read_text())))

        def settle(self, keep: set[str]) -> None:
            pass

        kept: dict = {}

    run_finalists(Runner())
    assert ran == ["0.s1", "1.s1", "2.s1", "0.s2", "1.s2"]  # trial_2 is clearly behind after two seeds
    verdicts = {f.trial: f.verdict for f in summarize(load_sweep(folder)).finalists}
    assert verdicts == {"0": "best", "1": "within noise of the best", "2": "behind the best"}


def test_a_race_round_keeps_its_runs_weights_on_disk_so_the_next_round_need_not_train_them_again(
    tmp_path: Path, caplog
) -> None:
    settings = ["tuner.max_trials=2", "finalists.top=1", "finalists.seeds=2"]
    job(tmp_path, *settings, "race.round=1", "race.rounds=2")  # an early round: the search, no finalists yet
    folder = tmp_path / "job"
    kept = [p.name for p in (folder / "kept").glob("trial_*.npz")]
    assert len(kept) == 1  # the best configuration's search run: only it may still win
    for name in ("best.keras", "best.json"):  # so the winner's model must come from the kept weights
        (folder / name).unlink()
    with caplog.at_level(logging.INFO, logger="tlsweep"):
        job(tmp_path, *settings, "race.round=2", "race.rounds=2", f"resume={folder}")
    found = winner(load_sweep(folder))
    assert kept == [f"trial_{found.model.trial_id}.npz"]  # its two seeds tie for closest to the mean: the first wins
    assert "again" not in caplog.text, caplog.text  # restored, not trained again
    assert exported(tmp_path)["trial"] == found.model.trial_id and not (folder / "kept").exists()


def test_kept_weights_are_read_back_only_for_the_run_they_were_saved_for(tmp_path: Path) -> None:
    from tlsweep.model import Snapshot

    snapshot = Snapshot({3: np.arange(6, dtype="float32").reshape(2, 3)}, [np.ones(4, "float32")])
    tag = {"trial_id": "2", "seed": 7, "best_epoch": 4, "value": 0.8125}
    snapshot.save(tmp_path / "trial_2.npz", tag)
    back = Snapshot.load(tmp_path / "trial_2.npz", tag)
    np.testing.assert_array_equal(back.backbone[3], snapshot.backbone[3])
    np.testing.assert_array_equal(back.head[0], snapshot.head[0])
    assert Snapshot.load(tmp_path / "trial_2.npz", {**tag, "value": 0.8}) is None  # trained again since: another run
    (tmp_path / "trial_2.npz").write_bytes((tmp_path / "trial_2.npz").read_bytes()[:100])  # cut off
    assert Snapshot.load(tmp_path / "trial_2.npz", tag) is None
