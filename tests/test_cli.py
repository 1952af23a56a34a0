"""``python -m tlsweep`` in a subprocess, as a user runs it: multiruns, outputs, and user errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import FAST, make_image_folder, run_cli

pytestmark = pytest.mark.slow


def assert_user_error(result, message: str) -> None:
    """Exit 1, the message on one line, no traceback."""
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if message in line]
    assert lines and lines[0].startswith("error: "), result.stdout


def test_multirun_runs_one_search_per_job_into_readable_folders(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images")
    result = run_cli(["-m", "dataset=folder", f"dataset.path={images}", "augmentation=none,light", *FAST], tmp_path)
    assert result.returncode == 0, result.stdout
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and p.name != "best")
    assert len(jobs) == 2 and all(j.startswith("augmentation=") for j in jobs), jobs
    for job in jobs:
        job_dir = sweeps[0] / job
        assert json.loads((job_dir / "job.json").read_text())["status"] == "completed"
        assert (job_dir / ".hydra" / "config.yaml").is_file() and (job_dir / "best.keras").is_file()
        assert len(list((job_dir / "trials").glob("trial_*.json"))) == 2
        assert len(list((job_dir / "tensorboard").iterdir())) == 2
    assert "trial_1 (2 of 2)" in result.stdout and "best so far" in result.stdout and "epoch 2/2" not in result.stdout
    assert "tensorboard --logdir outputs" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["search.params.finetune.learning_rate=tag(log, interval(0.1, 0.001))"], "needs its lower end first"),
        (["search.params.finetune.unfreeze_depth=choice(5, 50)"], "has only 23 layers"),
        (["backbone=mobilenet_v2", "dataset.image_size=32"], "could not get ImageNet weights from https://"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    make_image_folder(tmp_path / "one_class", classes=("cat",), split=False, per_class=2)
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "KERAS_HOME": str(tmp_path)}
    result = run_cli(args, tmp_path, env=offline)
    assert_user_error(result, message)
    if "lower end first" in message:  # a config mistake is caught before any folder is made
        assert not (tmp_path / "outputs").exists()
        return
    assert not list((tmp_path / "outputs" / "runs").iterdir())  # refused before it computed anything: no run left


TENSORFLOW_NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "NodeDef mentions", "Assets written", "W0000", "E0000")


def test_default_run_is_the_offline_demo(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        result = run_cli(["tuner.max_trials=1", "finetune.head_epochs=2", "finetune.finetune_epochs=1"], tmp_path)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stdout
    assert "digits 5-9" in result.stdout and "trial_0 (1 of 1)" in result.stdout and "epoch 3/3" in result.stdout
    run_dir = next((tmp_path / "outputs" / "runs").iterdir())
    assert (run_dir / "best.keras").is_file() and (run_dir / "labels.txt").read_text().split() == list("56789")
    assert (run_dir / "report.html").is_file() and "report written to" in result.stdout
    evaluation = json.loads((run_dir / "best" / "evaluation.json").read_text())  # the demo holds out a test split
    assert evaluation["images"] > 100 and f"test accuracy {evaluation['accuracy']:.4f}" in result.stdout
    best = json.loads((run_dir / "job.json").read_text())["best"]  # the answer: trial_0's mean over its seeds
    mean, (low, high) = best["mean"], best["interval"]
    shipped = "" if best["trial_id"] == "0" else f" (model: trial_{best['trial_id']})"  # its seed nearest the mean
    assert result.stdout.strip().splitlines()[-1] == (
        f"best: trial_0 val_accuracy {mean:.4f} ± {(high - low) / 2:.4f} over 3 seeds{shipped}, "
        f"test accuracy {evaluation['accuracy']:.4f}; model {run_dir.resolve() / 'best'}; "
        f"report {run_dir.resolve() / 'report.html'}"
    )
    # the terminal shows tlsweep's lines; TensorFlow's own go to the job's log
    assert not [line for line in result.stdout.splitlines() if any(n in line for n in TENSORFLOW_NOISE)]
    assert "absl::InitializeLog" in (run_dir / "tlsweep.log").read_text()
    # teammates can read the results: every file has the mode umask 022 gives
    private = [p for p in run_dir.rglob("*") if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert not private, private


@pytest.mark.parametrize("launcher", ["parallel", "processes"])
def test_launchers_run_jobs_in_other_processes_with_the_same_outputs(tmp_path: Path, launcher: str) -> None:
    images = make_image_folder(tmp_path / "images")
    settings = [*FAST, "tuner.max_trials=1", "search.params.finetune.unfreeze_depth=0", "threads=1"]
    extra = ["hydra.launcher.gpus_per_node=0"] if launcher == "processes" else []
    args = ["-m", f"hydra/launcher={launcher}", *extra, "dataset=folder", f"dataset.path={images},{tmp_path}/missing"]
    result = run_cli([*args, *settings], tmp_path)
    assert result.returncode == 1 and "1 job(s) failed:" in result.stdout, result.stdout
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    jobs = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/job.json")}
    assert sorted(jobs.values()) == ["completed", "failed"], jobs
    assert all(name.startswith("dataset.path=") for name in jobs)  # named by the swept value only
    assert (sweep / "best" / "model.keras").is_file() and "does not exist" in (sweep / "report.md").read_text()


def test_two_sweep_values_that_look_alike_get_two_folders_and_the_right_labels(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "photos" / "2024", classes=("cat", "dog"))
    make_image_folder(tmp_path / "photos_2024", classes=("bus", "car", "van"))
    settings = [*FAST, "tuner.max_trials=1", "search.params.finetune.unfreeze_depth=0", "report.enabled=false"]
    result = run_cli(["-m", "dataset=folder", "dataset.path=photos/2024,photos_2024", *settings], tmp_path)
    assert result.returncode == 0, result.stdout
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    labels = sorted((p.parent / "labels.txt").read_text().split() for p in sweep.glob("*/job.json"))
    assert labels == [["bus", "car", "van"], ["cat", "dog"]]  # each job kept its own data, in its own folder
    assert len(list(sweep.glob("*/job.json"))) == 2


def test_a_race_setting_the_sweeper_refuses_is_its_own_one_line(tmp_path: Path) -> None:
    result = run_cli(["-m", "hydra/sweeper=race", "hydra.sweeper.eta=1", "augmentation=none,light"], tmp_path)
    assert_user_error(result, "hydra.sweeper.eta=1 must be at least 2")
    assert "Error in call to target" not in result.stdout and not (tmp_path / "outputs").exists()
