"""Damaged or misdirected state is named, refused or repaired, never shown as a result or shipped."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from conftest import FAST, make_image_folder, make_spec, run_cli

from tlsweep import files
from tlsweep.errors import TlsweepError
from tlsweep.groups import ExportSpec
from tlsweep.paths import resume_argument, resume_target


def run_in(folder: Path, images: Path, *extra: str) -> None:
    from tlsweep.job import run_job

    spec = make_spec(["dataset=folder", f"dataset.path={images}", *FAST, *extra])
    run_job(spec, folder, {"backbone": "tiny"})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A finished two-trial run, exported, as ``python -m tlsweep`` leaves it."""
    from tlsweep.export import export_best

    root = tmp_path_factory.mktemp("damaged")
    images = make_image_folder(root / "images")
    run_in(root / "run", images)
    export_best(root / "run", ExportSpec(saved_model=False))
    return {"run": root / "run", "images": images}


def copy_of(finished: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    return run


def test_a_resume_pointed_at_a_job_of_a_sweep_continues_that_sweep_or_says_which_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "outputs" / "sweeps" / "2026-01-01_00-00-00"
    for job in ("augmentation=none", "augmentation=light"):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / "job.json").write_text(json.dumps({"status": "running"}))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    run = tmp_path / "outputs" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    job = sweep / "augmentation=none"

    assert resume_target(str(job), multirun=True) == sweep.resolve()  # -m: the job's sweep goes on
    assert resume_target(str(sweep), multirun=True) == sweep.resolve()
    assert resume_target(str(run), multirun=False) == run.resolve()
    refusals = [
        (str(job), False, f"is one job of the sweep {sweep.resolve()}: continue the sweep with its command, -m"),
        (str(sweep), False, "is a sweep's folder: continue it with its command and -m"),
        (str(run), True, "is a single run's folder, and -m continues a sweep: resume it without -m"),
        (str(tmp_path / "nope"), False, "is not a folder; give a folder under outputs/runs"),
    ]
    for value, multirun, message in refusals:
        with pytest.raises(TlsweepError, match="resume=") as refused:
            resume_target(value, multirun)
        assert message in str(refused.value)
    # unquoted, with the '=' of the job's folder name: taken before Hydra parses it, and quoted for Hydra
    args, notes = resume_argument(["-m", f"resume={job}"])
    assert args == ["-m", f"resume={sweep.resolve()}"]
    assert notes == [f"resume: augmentation=none is one job of the sweep {sweep.resolve()}: continuing the sweep"]
    assert resume_argument([f"resume='{run}'"]) == ([f"resume={run.resolve()}"], [])


def test_a_damaged_finished_trial_record_is_named_and_trained_again_on_resume(
    finished: dict[str, Path], tmp_path: Path, caplog
) -> None:
    run = copy_of(finished, tmp_path)
    path = run / "trials" / "trial_0.json"
    original = json.loads(path.read_text())
    path.write_text(path.read_text()[:200])  # cut short, as a full disk or a kill while copying leaves it
    record = json.loads((run / "job.json").read_text())
    (run / "job.json").write_text(json.dumps({**record, "status": "interrupted"}))  # the job was killed after it

    with caplog.at_level(logging.INFO, logger="tlsweep"):
        run_in(run, finished["images"], "resume=true")
    said = caplog.text
    assert "trial_0.json is unreadable" in said and "training trial_0 again from its hyperparameters" in said
    again = json.loads(path.read_text())
    assert again["status"] == "completed" and again["hyperparameters"] == original["hyperparameters"]
    assert [e["val_accuracy"] for e in again["history"]] == [e["val_accuracy"] for e in original["history"]]
    job = json.loads((run / "job.json").read_text())
    assert job["status"] == "completed" and (job["trials"], job["completed_trials"]) == (2, 2)


def test_a_record_damaged_when_the_winner_is_picked_stops_the_job(
    finished: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from tlsweep import tuners
    from tlsweep.job import run_job

    run = copy_of(finished, tmp_path)
    (run / "trials" / "trial_1.json").write_text('{"trial_id": "1", "status": "done"}')
    record = json.loads((run / "job.json").read_text())
    (run / "job.json").write_text(json.dumps({**record, "status": "interrupted"}))
    spec = make_spec(["dataset=folder", f"dataset.path={finished['images']}", *FAST, "resume=true"])
    monkeypatch.setattr(tuners, "retrain_damaged", lambda tuner: None)  # damaged after the search read it
    with pytest.raises(TlsweepError, match="trial_1.json: status is 'done', not one of running") as refused:
        run_job(spec, run, {"backbone": "tiny"})
    assert "move the damaged record away and resume" in str(refused.value)


def test_a_damaged_best_model_is_named_and_a_resume_trains_it_again(
    finished: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    import tensorflow as tf

    from tlsweep.export import export_best
    from tlsweep.runs import Runner

    run = copy_of(finished, tmp_path)
    best = run / files.BEST_MODEL
    whole = best.read_bytes()
    best.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TlsweepError) as refused:
        export_best(run, ExportSpec(saved_model=False))
    message = str(refused.value)
    assert "best.keras is damaged (not a whole .keras archive: cut short?)" in message
    assert f"resume the run to train it again from the records: its command with resume={run.resolve()}" in message

    def out_of_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    with monkeypatch.context() as patched:  # a failure while training it again is one line, like a run's
        patched.setattr(Runner, "_fit", out_of_memory)
        with pytest.raises(TlsweepError, match=r"trial_\d could not be trained again \(out of memory; lower"):
            run_in(run, finished["images"], "resume=true")

    run_in(run, finished["images"], "resume=true")  # the way out the message gives
    exported = export_best(run, ExportSpec(saved_model=False))
    assert files.model_origin(best)["trial_id"] == json.loads((exported / "export.json").read_text())["trial"]


def test_a_damaged_export_record_is_named_in_the_report(finished: dict[str, Path], tmp_path: Path, caplog) -> None:
    from tlsweep.report import build_report

    run = copy_of(finished, tmp_path)
    (run / "best" / "export.json").write_text("[1, 2]")
    with caplog.at_level(logging.INFO, logger="tlsweep"):
        paths = build_report(run)
    said = "best/export.json is not an export record (it is list, not a mapping)"
    assert f"{said}; left out of the report" in caplog.text
    report = paths["md"].read_text()
    assert "## Files that could not be read" in report and said in report
    assert "Best model, exported" not in report  # what it held is not guessed


def test_exporting_an_unfinished_job_says_so(finished: dict[str, Path], tmp_path: Path, caplog) -> None:
    from tlsweep.export import export_best

    run = copy_of(finished, tmp_path)
    record = json.loads((run / "job.json").read_text())
    (run / "job.json").write_text(json.dumps({**record, "status": "failed", "error": "3 trials in a row failed"}))
    killed = run / ".best.4194304.tmp"  # what a process killed while exporting leaves (no such pid: gone)
    (killed / "saved_model").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="tlsweep"):
        export_best(run, ExportSpec(saved_model=False))
    assert "has not finished (failed: 3 trials in a row failed): this exports its best so far" in caplog.text
    assert not killed.exists() and not list(run.glob(".best.*.tmp"))


@pytest.mark.slow
def test_a_second_resume_of_a_sweep_exits_1_and_leaves_the_end_to_the_process_that_runs_a_job(
    tmp_path: Path,
) -> None:
    images = make_image_folder(tmp_path / "images")
    args = ["-m", "dataset=folder", f"dataset.path={images}", *FAST, "tuner.max_trials=1", "augmentation=none,light"]
    first = run_cli(args, tmp_path, timeout=300)
    assert first.returncode == 0, first.stdout
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    job = sweep / "augmentation=light"
    record = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps({**record, "status": "running", "pid": os.getpid()}))
    report = (sweep / "report.md").stat().st_mtime_ns
    with files.locked(job / files.JOB_LOCK):  # this test's process runs that job, as a first resume would
        second = run_cli([*args, f"resume={sweep / 'augmentation=none'}"], tmp_path, timeout=300)
    out = second.stdout
    assert second.returncode == 1, out
    assert "resume: augmentation=none is one job of the sweep" in out  # the job folder continues its sweep
    assert "error: job " in out and "is being run by another process" in out
    assert "still being run by another process (augmentation=light: pid" in out
    assert (sweep / "report.md").stat().st_mtime_ns == report  # the report is left to the process that runs it
    assert not (sweep / "augmentation=none" / "augmentation=none").exists()
    assert "Traceback" not in out
