"""What a user sees on long runs and when things go wrong: progress and time left, one line per problem."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_image_folder, make_spec, run_cli

from tlsweep import files
from tlsweep.errors import TlsweepError
from tlsweep.groups import ExportSpec, ReportSpec
from tlsweep.records import Epoch, RunRecord
from tlsweep.tasks.images import IMAGES

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_long_work_says_how_far_it_is_and_how_long_it_still_takes(caplog, monkeypatch) -> None:
    from tlsweep.progress import Progress, duration

    clock = iter([0.0, 10.0, 20.0, 40.0])
    monkeypatch.setattr("tlsweep.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="tlsweep"):
        progress = Progress("feature cache: view 1/2", 400, every=5)  # not a terminal here: plain lines
        progress.advance(100)  # 100 images in 10 s
        progress.advance(100)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "feature cache: view 1/2: 100 of 400 images (25%), 10 images/s, about 30 s left"
    assert [duration(s) for s in (45, 190, 3720)] == ["45 s", "3m 10s", "1h 02m"]


def test_time_left_counts_each_unfreeze_depth_at_its_own_speed() -> None:
    from tlsweep.runs import time_left

    spec = make_spec(["tuner.max_trials=4", "search.params.finetune.unfreeze_depth=choice(0, 20)", "finalists.top=0",
                      "finetune.head_epochs=2", "finetune.finetune_epochs=3"])  # fmt: skip

    def run(trial_id: str, depth: int, stage2: float) -> RunRecord:
        history = [Epoch(1, "head", seconds=1.0), Epoch(2, "head", seconds=1.0)]
        history += [Epoch(e, "finetune", seconds=stage2) for e in (3, 4, 5)]
        depths = {"finetune.unfreeze_depth": depth}
        return RunRecord(trial_id, status="completed", hyperparameters=depths, history=history)

    # two trials left, each 2 head epochs (1 s) and 3 stage-2 epochs at a depth drawn from 0 (1 s) and 20 (9 s)
    assert time_left(spec, [run("0", 0, 1.0), run("1", 20, 9.0)]) == pytest.approx(2 * (2 + 3 * 5))
    assert time_left(spec, []) is None  # nothing timed yet: no guess
    # the finalists' runs, once chosen, each at its own depth; a run already done counts no more
    done = [run(str(i), 0, 1.0) for i in range(3)] + [run("3", 20, 9.0), run("3.s1", 20, 9.0)]
    planned = {"3.s1": 20, "3.s2": 20, "0.s1": 0}
    assert time_left(spec, done, planned) == pytest.approx((2 + 3 * 9) + (2 + 3 * 1))
    # a time budget ends the job sooner: it stops the runs it would not leave time for
    assert time_left(spec, done, planned, budget_left=12.0) == 12.0
    assert time_left(spec, done, planned, budget_left=-3.0) == 0.0


def test_a_damaged_feature_cache_is_rebuilt_and_the_job_goes_on(image_folder: Path, tmp_path: Path) -> None:
    from tlsweep.cache.features import make_cache
    from tlsweep.tasks.images.backbones import load_backbone
    from tlsweep.tasks.images.data import load_images as load_dataset

    spec = make_spec(["dataset=folder", f"dataset.path={image_folder}", *FAST, f"feature_cache.dir={tmp_path}/c"])
    data, backbone = load_dataset(spec.dataset, 32), load_backbone(spec.backbone, 32)
    first = make_cache(spec, backbone, data, IMAGES)
    first.prepare()
    expected = first.train_views(3)[0][0]
    for array in (tmp_path / "c").rglob("0.npy"):  # every stored array damaged in place, as a bad disk would
        raw = bytearray(array.read_bytes())
        raw[-4:] = b"\x7f\x7f\x7f\x7f"
        array.write_bytes(bytes(raw))
    again = make_cache(spec, backbone, data, IMAGES)  # a resumed job
    again.prepare()
    np.testing.assert_allclose(again.train_views(3)[0][0], expected, atol=1e-5)
    assert again.store.built > 0


def finished_run(tmp_path: Path) -> Path:
    from tlsweep.job import run_job

    images = make_image_folder(tmp_path / "images")
    spec = make_spec(["dataset=folder", f"dataset.path={images}", *FAST, "tuner.max_trials=1"])
    run_job(spec, tmp_path / "run", {"backbone": "tiny"})
    return tmp_path / "run"


def test_a_full_disk_while_exporting_is_one_line_and_the_export_can_be_finished(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import tensorflow as tf

    from tlsweep import callbacks, export

    run = finished_run(tmp_path)
    real = export._write_formats

    def full(*args, **kwargs):
        raise tf.errors.UnknownError(None, None, "SaveV2: variables/variables.data: No space left on device")

    monkeypatch.setattr(export, "_write_formats", full)
    monkeypatch.setattr(callbacks, "UNFINISHED", [])
    end = callbacks.SweepEnd({"saved_model": False}, {"enabled": False})
    with caplog.at_level(logging.INFO, logger="tlsweep"):
        end.finish(run)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    assert "could not export the best model (the disk is full" in line and "resume=true" in line
    assert callbacks.UNFINISHED == ["export the best model"]  # so the command exits 1
    assert not (run / "best").exists() and json.loads((run / "job.json").read_text())["status"] == "completed"
    monkeypatch.setattr(export, "_write_formats", real)
    end.finish(run)  # what resume=true does once the job is kept as it was
    assert (run / "best" / "model.keras").is_file()


def test_the_command_exits_1_when_the_end_of_a_run_could_not_be_done(monkeypatch) -> None:
    from tlsweep import __main__ as entry
    from tlsweep import callbacks

    monkeypatch.setattr(entry, "check_command_line", lambda args: [])
    monkeypatch.setattr(entry, "check_writable", lambda args: None)
    monkeypatch.setattr(entry, "main", lambda: callbacks.UNFINISHED.append("write the report"))
    monkeypatch.setattr(callbacks, "UNFINISHED", [])
    monkeypatch.setattr(entry, "UNFINISHED", callbacks.UNFINISHED)
    with pytest.raises(SystemExit) as info:
        entry.cli()
    assert info.value.code == 1


def test_a_damaged_trial_record_is_named_not_shown_as_a_result(tmp_path: Path) -> None:
    from tlsweep.report import build_report
    from tlsweep.report.summary import summarize
    from tlsweep.results import load_sweep

    run = tmp_path / "run"
    (run / "trials").mkdir(parents=True)
    good = {"trial_id": "0", "status": "completed", "objective": "val_accuracy",
            "hyperparameters": {"learning_rate": 0.01}, "best_epoch": 1,
            "history": [{"epoch": 1, "stage": "head", "val_accuracy": 0.8}]}  # fmt: skip
    (run / "trials" / "trial_0.json").write_text(json.dumps(good))
    (run / "trials" / "trial_1.json").write_text(json.dumps({**good, "trial_id": "1", "history": None}))
    worse = {**good, "trial_id": "2", "history": [{"epoch": 1, "stage": "head", "val_accuracy": "0.99"}]}
    (run / "trials" / "trial_2.json").write_text(json.dumps(worse))
    no_stage = {**good, "trial_id": "3", "best_epoch": 2, "history": [{"epoch": 1, "val_accuracy": 0.7},
                                                                      {"epoch": 2, "val_accuracy": 0.9}]}  # fmt: skip
    (run / "trials" / "trial_3.json").write_text(json.dumps(no_stage))  # its epochs lost their stage
    (run / "job.json").write_text(json.dumps({"status": "completed"}))
    rows = {r["trial"]: r for r in summarize(load_sweep(run)).table.rows}
    assert rows["0"]["rank"] == 1 and rows["0"]["val_accuracy"] == 0.8
    assert rows["1"]["status"] == rows["2"]["status"] == rows["3"]["status"] == "unreadable"
    assert "trial_1.json: history is None, not a list" in rows["1"]["error"]
    assert "trial_2.json: history's val_accuracy is '0.99', not a number" in rows["2"]["error"]
    assert "trial_3.json: history[0] has no stage" in rows["3"]["error"]  # never shown as stage 1
    assert rows["1"]["rank"] is rows["2"]["rank"] is rows["3"]["rank"] is None
    assert "trial_2.json" in build_report(run)["md"].read_text()


def test_a_job_record_whose_status_is_not_a_status_is_named_as_damaged(tmp_path: Path) -> None:
    from tlsweep.callbacks import failed_jobs
    from tlsweep.report import build_report
    from tlsweep.results import load_sweep

    run = tmp_path / "run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"status": 3, "job": "run"}))
    (job,) = load_sweep(run).jobs
    assert job.status == "unreadable" and "job.json: status is 3, not one of running" in str(job.error)
    assert failed_jobs(run) == [f"run: {job.error}"]  # the sweep's exit code counts it
    assert "job.json: status is 3" in build_report(run)["md"].read_text()


def test_a_report_or_predictions_that_cannot_be_written_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from tlsweep.predict import main as predict_main
    from tlsweep.report.__main__ import main as report_main

    run = finished_run(tmp_path)

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    from tlsweep.export import export_best

    export_best(run, ExportSpec(saved_model=False))
    capsys.readouterr()
    monkeypatch.setattr(files, "atomic_write", read_only)
    assert report_main([str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the report into {run} (Permission denied)") and "Traceback" not in err
    image = next((tmp_path / "images" / "val" / "cat").iterdir())
    assert predict_main([str(run / "best"), str(image), "--csv", str(tmp_path / "p.csv")]) == 1
    out = capsys.readouterr()
    assert "cat" in out.out and out.err.startswith("error: cannot write") and "Traceback" not in out.err
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert predict_main([str(run / "best"), str(fifo)]) == 1
    assert "is not an image file or a folder (a pipe or a device?)" in capsys.readouterr().err
    (run / "best" / "export.json").write_text("[1, 2]")
    assert predict_main([str(run / "best"), str(image)]) == 1
    assert "export.json is not an export record" in capsys.readouterr().err


def test_tlsweeps_own_output_folder_inside_the_image_folder_is_not_a_class(tmp_path: Path) -> None:
    from tlsweep.folders import class_files
    from tlsweep.tasks.images.decode import IMAGE_EXTENSIONS

    images = make_image_folder(tmp_path / "images", split=False)
    (images / "outputs" / "runs" / "2026-01-01").mkdir(parents=True)  # python -m tlsweep dataset.path=. from here
    (images / "outputs" / "runs" / "2026-01-01" / "x.png").write_bytes(b"")
    assert list(class_files(images, IMAGE_EXTENSIONS)[0]) == ["cat", "dog", "fox"]


def test_hyperband_honours_a_cap_on_its_trials(image_folder: Path, tmp_path: Path) -> None:
    from tlsweep.job import run_job

    settings = ["dataset=folder", f"dataset.path={image_folder}", *FAST, "tuner=hyperband"]
    settings += ["finetune.head_epochs=3", "finetune.finetune_epochs=3"]  # a schedule of 10 trials ...
    assert len(make_spec([*settings, "tuner.max_trials=null"]).tuner.schedule(6)) == 10
    record = run_job(make_spec([*settings, "tuner.max_trials=2"]), tmp_path / "job", {"tuner": "hyperband"})  # ... cut
    assert record.get("trials") == 2 and len(list((tmp_path / "job" / "trials").glob("trial_*.json"))) == 2


@pytest.mark.slow
def test_failed_trials_are_one_line_each_and_a_second_process_on_the_same_run_is_refused(tmp_path: Path) -> None:
    args = [*FAST, "finetune.lr_scale=1e9"]  # every stage 2 diverges
    result = run_cli(args, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert result.stdout.count(" failed: the loss became NaN, infinite or exploded") == 2
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    with files.locked(run / files.JOB_LOCK):  # as another process running it holds it
        again = run_cli([*args, f"resume={run}"], tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stdout
    assert "is being run by another process" in again.stdout and again.stdout.count("error:") == 1


def test_report_and_export_settings_are_typed_for_the_end_of_a_run() -> None:
    from tlsweep.callbacks import SweepEnd

    end = SweepEnd({"enabled": True, "tflite": True}, {"top": 3})
    assert end.export == ExportSpec(tflite=True) and end.report == ReportSpec(top=3)
    with pytest.raises(TlsweepError):
        make_spec(["export.quantize=int4"])


def test_every_command_sends_tensorflows_lines_away_before_tensorflow_starts() -> None:
    """TensorFlow writes its C++ lines (oneDNN, CUDA, absl) when it is imported: a command module that imports
    it before its ``__main__`` block sends descriptor 2 away shows them on the terminal."""
    commands = ["__main__", "export", "predict", "weights", "report.__main__", "cache.__main__"]
    check = "; ".join(f"import tlsweep.{m}" for m in commands) + "; import sys; print('tensorflow' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert imported.stdout.strip() == "False", imported.stdout + imported.stderr
