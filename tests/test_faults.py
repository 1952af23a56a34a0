"""Nothing lost: failed trials, a full disk, determinism, and resuming a sweep killed mid-trial."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import time
from pathlib import Path

import keras
import pytest
import tensorflow as tf
from conftest import FAST, make_image_folder, make_spec, run_cli, start_cli, stop_when, swallow_ctrl_c

from tlsweep import files, interrupt
from tlsweep.errors import TlsweepError
from tlsweep.job import run_job
from tlsweep.objective import Objective
from tlsweep.paths import output_dir
from tlsweep.stopping import EarlyStop, StopRules

CHOICES = {"backbone": "tiny", "dataset": "folder"}
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def folder_job(images: Path, job_dir: Path, *overrides: str) -> dict:
    cfg = make_spec(["dataset=folder", f"dataset.path={images}", *FAST, *overrides])
    return run_job(cfg, job_dir, CHOICES)


def trials(job_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((job_dir / "trials").glob("trial_*.json"))}


def outcome(job_dir: Path) -> dict[str, tuple]:
    """What a user compares between runs: each trial's hyperparameters and per-epoch metrics."""
    return {
        name: (
            record["status"],
            record["hyperparameters"],
            [tuple(round(e[k], 5) for k in METRICS) for e in record["history"]],
        )
        for name, record in trials(job_dir).items()
    }


def test_the_same_seed_gives_the_same_sweep(image_folder: Path, tmp_path: Path) -> None:
    folder_job(image_folder, tmp_path / "a", "augmentation=light")
    folder_job(image_folder, tmp_path / "b", "augmentation=light")
    folder_job(image_folder, tmp_path / "c", "augmentation=light", "seed=1")
    assert outcome(tmp_path / "a") == outcome(tmp_path / "b")
    assert outcome(tmp_path / "a") != outcome(tmp_path / "c")


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(image_folder: Path, tmp_path: Path) -> None:
    record = folder_job(
        image_folder,
        tmp_path / "job",
        "tuner=grid",
        "tuner.max_trials=2",
        "search.params.finetune.optimizer=sgd",
        "search.params.finetune.learning_rate=tag(log, interval(1e-3, 1e30))",
        "tuner.log_step=1e33",  # two grid points: a sane rate and an absurd one
        "search.params.finetune.unfreeze_depth=0",
    )
    by_rate = {r["hyperparameters"]["finetune.learning_rate"]: r for r in trials(tmp_path / "job").values()}
    assert sorted(by_rate) == pytest.approx([1e-3, 1e30])
    failed = by_rate[1e30]
    assert failed["status"] == "failed" and "NaN, infinite or exploded" in failed["error"]
    assert len(failed["history"]) == 1  # stopped at once, not after every planned epoch
    assert by_rate[1e-3]["status"] == "completed" and record.status == "completed"


def test_an_out_of_memory_trial_fails_and_the_search_goes_on(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    real_fit, calls = keras.Model.fit, []

    def fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first trial's first stage
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    record = folder_job(image_folder, tmp_path / "job")
    statuses = sorted((r["status"], r.get("error", "")) for r in trials(tmp_path / "job").values())
    assert statuses[0][0] == "completed" and statuses[1][0] == "failed"
    assert "out of memory; lower finetune.batch_size" in statuses[1][1]
    assert record.status == "completed" and record.get("completed_trials") == 1


def test_a_full_disk_stops_the_job_with_one_line_and_keeps_earlier_records(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    real_write = files.atomic_write
    trial_writes = []

    def write(path, write_fn, suffix=""):
        if "trial_1" in str(path):  # the second trial cannot save its record
            trial_writes.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, write_fn, suffix)

    monkeypatch.setattr(files, "atomic_write", write)
    with pytest.raises(TlsweepError, match=r"the disk is full .*trial_1.json.*resume=true"):
        folder_job(image_folder, tmp_path / "job")
    kept = trials(tmp_path / "job")
    assert list(kept) == ["trial_0"] and kept["trial_0"]["status"] == "completed"
    assert json.loads((tmp_path / "job" / "job.json").read_text())["status"] == "failed"


def test_new_folders_never_reuse_an_existing_one_and_resume_finds_the_newest_started(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    first = output_dir("sweeps", False, "2026-01-01_00-00-00", str(outputs))
    Path(first).mkdir(parents=True)
    second = output_dir("sweeps", False, "2026-01-01_00-00-00", str(outputs))
    assert second == first + "_1"
    Path(second).mkdir()
    os.utime(first, (time.time() + 60, time.time() + 60))  # the first was written to last: that does not count
    assert output_dir("sweeps", True, "2026-02-02_00-00-00", str(outputs)) == second
    assert output_dir("sweeps", second, "x", str(outputs)) == second
    with pytest.raises(TlsweepError, match="is not a folder"):
        output_dir("sweeps", str(outputs / "nope"), "x", str(outputs))


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_to_the_same_results(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images")
    args = ["-m", "dataset=folder", f"dataset.path={images}", "augmentation=none,light", *FAST]
    args = [a for a in args if not a.startswith(("tuner.max_trials", "finetune.head_epochs"))]
    args += ["tuner.max_trials=3", "finetune.head_epochs=3"]

    (tmp_path / "reference").mkdir()
    reference = run_cli(args, tmp_path / "reference")
    assert reference.returncode == 0, reference.stdout

    work = tmp_path / "killed"
    work.mkdir()
    process = start_cli(args, work)

    def second_job_mid_trial() -> bool:  # the second job has finished one trial and is inside the next
        records = list(work.glob("outputs/sweeps/*/augmentation=light/trials/trial_*.json"))
        running = [json.loads(p.read_text()) for p in records]
        return any(r["status"] == "running" and r["history"] for r in running) and len(records) >= 2

    stop_when(process, second_job_mid_trial)
    (sweep,) = (work / "outputs" / "sweeps").iterdir()
    first_job = sweep / "augmentation=none"
    finished_before = {p.name: p.stat().st_mtime_ns for p in (first_job / "trials").iterdir()}
    assert json.loads((first_job / "job.json").read_text())["status"] == "completed"

    resumed = run_cli([*args, "resume=true"], work)
    assert resumed.returncode == 0, resumed.stdout
    assert "job augmentation=none already completed" in resumed.stdout
    assert list((work / "outputs" / "sweeps").iterdir()) == [sweep]  # no new sweep folder
    assert {p.name: p.stat().st_mtime_ns for p in (first_job / "trials").iterdir()} == finished_before
    (ref_sweep,) = (tmp_path / "reference" / "outputs" / "sweeps").iterdir()
    for job in ("augmentation=light", "augmentation=none"):
        assert outcome(sweep / job) == outcome(ref_sweep / job), job
    rows = (sweep / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # the report counts each trial once


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_continue(tmp_path: Path) -> None:
    args = [*FAST, "tuner.max_trials=3", "finetune.head_epochs=4"]
    process = start_cli(args, tmp_path)

    def started() -> bool:
        return any(json.loads(p.read_text())["history"] for p in tmp_path.glob("outputs/runs/*/trials/*"))

    out = stop_when(process, started, signal.SIGINT)
    assert process.returncode == 130 and "Traceback" not in out, out
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert json.loads((run / "job.json").read_text())["status"] == "interrupted"
    resume_line = next(line for line in out.splitlines() if "continue:" in line)
    assert resume_line.strip() == f"continue: python -m tlsweep {shlex.join(args)} resume={run}"
    resumed = run_cli(shlex.split(resume_line.split("continue: python -m tlsweep ")[1]), tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    assert [r["status"] for r in trials(run).values()] == ["completed"] * 3
    assert list((tmp_path / "outputs" / "runs").iterdir()) == [run]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_that_library_code_swallows_still_stops_training_at_the_end_of_the_epoch() -> None:
    epochs: list[int] = []
    count = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs.append(epoch))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = tf.zeros((8, 2))
    stop = EarlyStop(Objective("val_loss"), None, StopRules(), depth=None)
    with interrupt.handled():
        swallow_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=3, verbose=0, callbacks=[count, stop])
    assert epochs == [0]


def test_a_damaged_tuner_state_is_one_clear_error(image_folder: Path, tmp_path: Path) -> None:
    folder_job(image_folder, tmp_path / "job", "tuner.max_trials=1")
    record = json.loads((tmp_path / "job" / "job.json").read_text())
    (tmp_path / "job" / "job.json").write_text(json.dumps({**record, "status": "interrupted"}))
    (tmp_path / "job" / "tuner" / "oracle.json").write_text('{"ongoing_trials": {')  # cut off by a kill
    with pytest.raises(TlsweepError, match=r"KerasTuner's saved state in .*tuner is damaged"):
        folder_job(image_folder, tmp_path / "job", "resume=true", "tuner.max_trials=2")
