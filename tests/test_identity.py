"""Never a wrong model: a job folder is never reused for another run, data that changed is never mixed
in, the exported model is the one the records name, and printed commands survive any folder name."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, class_image, make_image_folder, make_spec, write_image
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from tlsweep import files
from tlsweep.__main__ import interrupted_message
from tlsweep.config import check_writable
from tlsweep.errors import TlsweepError
from tlsweep.export import export_best
from tlsweep.groups import ExportSpec
from tlsweep.job import run_job
from tlsweep.paths import newest_unfinished
from tlsweep.predict import load_predictor
from tlsweep.report import build_report
from tlsweep.tasks.images.data import load_images as load_dataset
from tlsweep.tasks.images.decode import decode_image

CHOICES = {"backbone": "tiny", "dataset": "folder"}
EXPORT = ExportSpec(saved_model=False, tflite=False)
ONE_TRIAL = [
    *FAST,
    "tuner.max_trials=1",
    "search.params.finetune.unfreeze_depth=0",
    "finetune=none",
    "finetune.head_epochs=1",
]


def job(images: Path, job_dir: Path, *overrides: str) -> dict:
    return run_job(make_spec(["dataset=folder", f"dataset.path={images}", *ONE_TRIAL, *overrides]), job_dir, CHOICES)


def record(job_dir: Path) -> dict:
    return json.loads((job_dir / "job.json").read_text())


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    images = make_image_folder(tmp_path / "images")
    job(images, tmp_path / "job")
    return images, tmp_path / "job"


def test_a_folder_holding_a_run_is_not_reused_without_resume(finished, tmp_path: Path) -> None:
    _, job_dir = finished
    other = make_image_folder(tmp_path / "other", classes=("bus", "car"))
    before = (job_dir / "job.json").read_text()
    with pytest.raises(TlsweepError, match=r"already holds a run .*give a new folder, or continue that run with"):
        job(other, job_dir)
    assert (job_dir / "job.json").read_text() == before  # the earlier run's record is untouched
    assert (job_dir / "labels.txt").read_text().split() == ["cat", "dog", "fox"]


def test_resume_refuses_other_settings(finished) -> None:
    images, job_dir = finished
    with pytest.raises(TlsweepError, match=r"other settings \(finetune.batch_size: 8 → 4\)"):
        job(images, job_dir, "resume=true", "finetune.batch_size=4")
    assert job(images, job_dir, "resume=true", "tuner.max_trials=2").status == "completed"  # not an identity


def test_resume_refuses_changed_data_and_says_what_changed(finished) -> None:
    images, job_dir = finished
    rng = np.random.default_rng(5)
    for i in range(6):
        write_image(images / "train" / "aardvark" / f"a{i}.png", class_image(0, rng))
        write_image(images / "val" / "aardvark" / f"a{i}.png", class_image(0, rng))
    write_image(images / "train" / "dog" / "extra.png", class_image(1, rng))
    with pytest.raises(TlsweepError) as info:
        job(images, job_dir, "resume=true")
    message = str(info.value)
    assert "class 'aardvark' added" in message and "train/dog: 1 file(s) added" in message
    assert "allow_data_change=true" in message and "\n" not in message
    assert (job_dir / "labels.txt").read_text().split() == ["cat", "dog", "fox"]  # nothing touched

    job(images, job_dir, "resume=true", "allow_data_change=true")  # the old trials step aside, new ones run
    assert (job_dir / "labels.txt").read_text().split() == ["aardvark", "cat", "dog", "fox"]
    (replaced,) = (job_dir / "replaced").iterdir()
    assert (replaced / "trials" / "trial_0.json").is_file() and (replaced / "best.keras").is_file()
    export = export_best(job_dir, EXPORT)
    assert load_predictor(export).classes == ["aardvark", "cat", "dog", "fox"]


def test_a_second_process_never_runs_the_same_job(finished) -> None:
    images, job_dir = finished
    holding = files.locked(job_dir / files.JOB_LOCK, lambda: AssertionError("the test holds the lock first"))
    with holding, pytest.raises(TlsweepError, match=r"is being run by another process \(pid \d+ on"):
        job(images, job_dir, "resume=true")


def test_a_best_model_that_cannot_be_saved_fails_its_trial_with_the_real_reason(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "best.keras")

    monkeypatch.setattr(files, "save_model", full)
    with pytest.raises(TlsweepError, match="the disk is full"):
        job(image_folder, tmp_path / "job")
    trial = json.loads((tmp_path / "job" / "trials" / "trial_0.json").read_text())
    assert trial["status"] == "failed" and "No space left on device" in trial["error"]
    assert "disk is full" in record(tmp_path / "job")["error"]
    assert export_best(tmp_path / "job", EXPORT) is None


def test_the_export_refuses_a_model_file_that_is_not_the_reported_trial(finished) -> None:
    _, job_dir = finished
    trial = json.loads((job_dir / "trials" / "trial_0.json").read_text())  # a trial the records rank first ...
    history = [{**entry, "val_accuracy": 1.0} for entry in trial["history"]]
    better = {**trial, "trial_id": "7", "val_accuracy": 1.0, "history": history}
    (job_dir / "trials" / "trial_7.json").write_text(json.dumps(better))  # ... whose model best.keras is not
    with pytest.raises(TlsweepError, match=r"holds trial_0 .* but the records' best is trial_7"):
        export_best(job_dir, EXPORT)
    assert not (job_dir / "best").exists()


def test_a_damaged_best_model_or_export_record_is_one_line(finished) -> None:
    _, job_dir = finished
    cfg = EXPORT
    export = export_best(job_dir, cfg)
    data = (job_dir / "best.keras").read_bytes()
    with open(job_dir / "best.keras", "r+b") as f:  # the weights cut off; the zip's index still names the trial
        f.seek(len(data) // 3)
        f.write(b"\0" * 4096)
    with pytest.raises(TlsweepError, match="best.keras is damaged"):
        export_best(job_dir, cfg)
    exported = json.loads((export / "export.json").read_text())
    (export / "export.json").write_text(json.dumps({k: v for k, v in exported.items() if k != "classes"}))
    with pytest.raises(TlsweepError, match=r"export.json is not an export record \(it has no classes\)"):
        load_predictor(export)


def test_resume_true_continues_the_newest_unfinished_run_by_start_time(tmp_path: Path) -> None:
    def sweep(name: str, started: str, statuses: list[str]) -> Path:
        for i, status in enumerate(statuses):
            (tmp_path / name / f"job{i}").mkdir(parents=True)
            (tmp_path / name / f"job{i}" / "job.json").write_text(json.dumps({"status": status, "started": started}))
        return tmp_path / name

    killed = sweep("2026-01-02_00-00-00", "2026-01-02T00:00:00+00:00", ["completed", "failed"])
    sweep("2026-01-01_00-00-00", "2026-01-01T00:00:00+00:00", ["running"])  # older, unfinished
    done = sweep("2026-01-03_00-00-00", "2026-01-03T00:00:00+00:00", ["completed"])  # newest, finished
    os.utime(done, (1, 1))
    (tmp_path / "2026-01-01_00-00-00").touch()  # a rebuilt report makes an old folder the most recently modified
    assert newest_unfinished(tmp_path) == killed
    record = json.loads((killed / "job1" / "job.json").read_text())
    (killed / "job1" / "job.json").write_text(json.dumps({**record, "status": "completed"}))
    (tmp_path / "2026-01-01_00-00-00" / "job0" / "job.json").write_text(json.dumps({"status": "completed"}))
    assert newest_unfinished(tmp_path) == done  # all finished: the newest (to run more trials)


STRANGE = "my runs/$(touch pwned) & 'x' ${oops}"


def test_printed_commands_survive_spaces_and_shell_syntax_in_folder_names(finished, tmp_path: Path) -> None:
    root = tmp_path / STRANGE
    shutil.copytree(finished[1], root / "job")
    message = interrupted_message(["dataset=folder", "dataset.path=a b"], root)
    continue_line = next(line for line in message.splitlines() if "continue:" in line)
    args = shlex.split(continue_line.split("continue: ")[1])  # the shell's reading, then Hydra's
    assert args[:5] == ["python", "-m", "tlsweep", "dataset=folder", "dataset.path=a b"]
    resume = OverridesParser.create().parse_override(args[5])
    assert resume.key_or_group == "resume"
    assert OmegaConf.create({"resume": resume.value()}).resume == str(root)  # as the job reads it: interpolated
    report_line = message.splitlines()[-1].split("report on them: ")[1]
    assert shlex.split(report_line)[-1] == str(root)
    export_best(root, EXPORT)
    markdown = build_report(root)["md"].read_text()
    for prefix in ("tensorboard --logdir ", "python -m tlsweep.predict "):
        line = next(line for line in markdown.splitlines() if line.startswith(prefix))
        assert shlex.split(line)[-2 if "predict" in line else -1] in (str(root.resolve()), str(root / "best")), line
    assert not Path("pwned").exists()


def test_images_are_read_upright_as_viewers_show_them(tmp_path: Path) -> None:
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, :20] = 255  # white on the left
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # stored sideways, as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90° clockwise to show
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = decode_image(tmp_path / "phone.jpg", 32).astype(int)
    assert shown[:, :16].mean() > 200 and shown[:, 16:].mean() < 50  # left half white again


def test_a_test_folder_that_is_the_training_folder_is_refused(image_folder: Path) -> None:
    cfg = make_spec(["dataset=folder", f"dataset.path={image_folder}", f"dataset.test={image_folder / 'train'}"])
    with pytest.raises(TlsweepError, match="is \\(or holds\\) the training images"):
        load_dataset(cfg.dataset, 32)


def test_pipes_and_huge_images_are_skipped_not_waited_on(image_folder: Path, tmp_path: Path) -> None:
    os.mkfifo(image_folder / "train" / "cat" / "pipe.jpg")  # opening it to read would wait forever
    data = load_dataset(make_spec(["dataset=folder", f"dataset.path={image_folder}"]).dataset, 32)
    assert any("pipe.jpg" in s for s in data.skipped) and len(data.y_train) == 24
    write_image(tmp_path / "big.png", np.zeros((30, 30, 3), np.uint8))
    assert decode_image(tmp_path / "big.png", 32, max_pixels=800) is None  # over the budget, by its header
    assert decode_image(tmp_path / "big.png", 32, max_pixels=900) is not None


def test_a_class_name_labels_txt_cannot_hold_is_refused(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", classes=("cat", "dog\nfox"))
    with pytest.raises(TlsweepError, match="line break"):
        load_dataset(make_spec(["dataset=folder", f"dataset.path={images}"]).dataset, 32)


def test_a_report_reads_a_record_whose_history_is_null(finished) -> None:
    _, job_dir = finished
    trial = json.loads((job_dir / "trials" / "trial_0.json").read_text())
    (job_dir / "trials" / "trial_0.json").write_text(json.dumps({**trial, "history": None}))
    assert build_report(job_dir)["csv"].is_file()


def test_consecutive_failures_end_the_job_with_one_line(image_folder: Path, tmp_path: Path) -> None:
    overrides = ["tuner.max_consecutive_failed_trials=1", "search.params.finetune.optimizer=sgd"]
    overrides += ["search.params.finetune.learning_rate=tag(log, interval(1e30, 1e31))"]
    with pytest.raises(TlsweepError) as info:
        job(image_folder, tmp_path / "job", *overrides)
    message = str(info.value)
    assert "1 trials in a row failed" in message and "NaN, infinite or exploded" in message
    assert "Traceback" not in message and "\n" not in message


def test_a_read_only_outputs_folder_is_one_line_before_anything_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(TlsweepError, match="is read-only for you"):
        check_writable([], tmp_path / "outputs")
    check_writable(["hydra.run.dir=elsewhere"], tmp_path / "outputs")  # a folder of the user's choice
