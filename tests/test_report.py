"""The sweep report: built from real tiny runs at the end of a sweep, and rebuilt from whatever is on disk."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, make_image_folder, run_cli

from tlsweep.records import Epoch
from tlsweep.report import build_report
from tlsweep.report.__main__ import main as report_main
from tlsweep.report.plots import MAX_LEGEND, _series
from tlsweep.report.render import _fmt
from tlsweep.report.summary import accuracy_interval, overfitting, summarize
from tlsweep.results import load_sweep

ODD_CLASS = "<b>x<i>"  # class names are user data: the HTML must show them, escaped


pytestmark = pytest.mark.xdist_group("test_report")  # its tests share a module-scoped fixture: one worker


def trial_records(root: Path) -> dict[tuple[str, str], dict]:
    return {
        (p.parent.parent.name, json.loads(p.read_text())["trial_id"]): json.loads(p.read_text())
        for p in root.glob("*/trials/trial_*.json")
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real sweep: two jobs on images (one class named like HTML), two jobs on a missing folder."""
    work = tmp_path_factory.mktemp("sweep")
    images = make_image_folder(work / "images", classes=("cat", ODD_CLASS, "fox"))
    paths = f"{images},{work / 'missing'}"
    args = ["-m", "dataset=folder", f"dataset.path={paths}", "augmentation=none,light", "dataset.test_split=0.25"]
    result = run_cli([*args, *FAST], work)
    (root,) = (work / "outputs" / "sweeps").iterdir()
    return root, result


@pytest.mark.slow
def test_the_sweep_writes_its_report_at_the_end_although_jobs_failed(sweep) -> None:
    root, result = sweep
    assert result.returncode == 1 and "2 job(s) failed" in result.stdout and "Traceback" not in result.stdout
    assert f"report written to {root.relative_to(root.parents[2])}/report.html" in result.stdout
    for name in ("report.html", "report.md", "trials.csv", "best/model.keras", "best/evaluation.json"):
        assert (root / name).is_file()
    assert f"exported to {root.relative_to(root.parents[2])}/best" in result.stdout
    assert sorted(json.loads(p.read_text())["status"] for p in root.glob("*/job.json")) == [
        "completed",
        "completed",
        "failed",
        "failed",
    ]


@pytest.mark.slow
def test_the_table_ranks_every_trial_as_its_record_says(sweep) -> None:
    root, _ = sweep
    records = trial_records(root)
    rows = read_csv(root / "trials.csv")
    assert len(rows) == len(records) == 4
    for row in rows:
        record = records[(row["job"], row["trial"])]
        best = next(e for e in record["history"] if e["epoch"] == record["best_epoch"])
        assert float(row["val_accuracy"]) == pytest.approx(record["value"])
        assert float(row["val_loss"]) == pytest.approx(best["val_loss"])
        assert float(row["stage1_val_accuracy"]) == pytest.approx(record["stages"]["head"]["value"])
        hyperparameters = record["hyperparameters"]
        assert float(row["finetune.learning_rate"]) == pytest.approx(hyperparameters["finetune.learning_rate"])
        assert row["finetune.optimizer"] == hyperparameters["finetune.optimizer"]
        assert row["stage2"] == ("rolled back" if record["rolled_back"] else "improved")
        assert row["augmentation"] == row["job"].removeprefix("augmentation=").split(",")[0]
    ranked = sorted(rows, key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in ranked] == [1, 2, 3, 4]
    accuracies = [float(r["val_accuracy"]) for r in ranked]
    assert accuracies == sorted(accuracies, reverse=True)


@pytest.mark.slow
def test_the_csv_has_every_column(sweep) -> None:
    root, _ = sweep
    with open(root / "trials.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    expected = {
        "rank", "job", "trial", "status", "backbone", "augmentation", "dataset.path", "finetune.learning_rate",
        "finetune.optimizer", "finetune.unfreeze_depth", "val_accuracy", "val_loss", "stage1_val_accuracy",
        "stage1_val_loss", "best_epoch", "best_stage", "stage2", "duration_s", "overfitting", "error", "tensorboard",
        "val_balanced_accuracy", "val_macro_f1", "stopped",
    }  # fmt: skip
    assert expected <= set(header), expected - set(header)


@pytest.mark.slow
def test_the_html_headline_names_the_best_trial_and_escapes_user_text(sweep) -> None:
    root, _ = sweep
    html = (root / "report.html").read_text()
    best = min(read_csv(root / "trials.csv"), key=lambda r: int(r["rank"]))
    headline = html[html.index('class="headline"') : html.index("<h2>Jobs")]
    assert f"{best['job']} trial_{best['trial']}" in headline
    assert f"val_accuracy {_fmt(float(best['val_accuracy']))}" in headline
    assert "python -m tlsweep " in headline
    assert "&lt;b&gt;x&lt;i&gt;" in html and ODD_CLASS not in html
    assert html.count("data:image/png;base64,") >= 2 and "http://" not in html and "https://" not in html
    assert "does not exist" in html  # the failed jobs, with their error
    evaluation = json.loads((root / "best" / "evaluation.json").read_text())
    assert f"Held-out test: accuracy <b>{_fmt(evaluation['accuracy'])}</b>" in html
    assert f"python -m tlsweep.predict {root.relative_to(root.parents[2]) / 'best'}" in html
    assert f"tensorboard --logdir {root}" in html


@pytest.mark.slow
def test_the_command_in_the_headline_reproduces_the_best_trial(sweep, tmp_path: Path) -> None:
    root, _ = sweep
    best = min(read_csv(root / "trials.csv"), key=lambda r: int(r["rank"]))
    command = re.search(r"```\n(python -m tlsweep .*)\n```", (root / "report.md").read_text()).group(1)
    args = shlex.split(command)[3:]
    result = run_cli([*args, "verbose=false"], tmp_path)
    assert result.returncode == 0, result.stdout
    (trial,) = (tmp_path / "outputs" / "runs").glob("*/trials/trial_*.json")
    record = json.loads(trial.read_text())
    assert record["hyperparameters"]["finetune.learning_rate"] == float(best["finetune.learning_rate"])  # exactly
    assert record["hyperparameters"]["finetune.optimizer"] == best["finetune.optimizer"]
    assert record["hyperparameters"]["finetune.unfreeze_depth"] == int(best["finetune.unfreeze_depth"])
    assert record["choices"]["augmentation"] == best["augmentation"]
    assert (next((tmp_path / "outputs" / "runs").iterdir()) / "report.html").is_file()  # a single run's report


@pytest.mark.slow
def test_a_crashed_sweep_still_gets_a_report_that_lists_what_happened(sweep, tmp_path: Path, capsys) -> None:
    source, _ = sweep
    root = tmp_path / "crashed"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("tensorboard", "tuner", "*.keras", "report.*"))
    job = next(p.parent for p in sorted(root.glob("*/job.json")) if json.loads(p.read_text())["status"] == "completed")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = json.loads((job / "job.json").read_text())
    record.update(status="running", pid=int(dead.stdout), host=socket.gethostname())
    (job / "job.json").write_text(json.dumps(record))
    running = json.loads((job / "trials" / "trial_0.json").read_text())
    (job / "trials" / "trial_7.json").write_text('{"trial_id": "7", "status": "runn')  # cut off mid-write
    running.update(trial_id="8", status="running", history=running["history"][:1])
    for key in ("best_epoch", "stages", "rolled_back", "value"):
        running.pop(key)
    (job / "trials" / "trial_8.json").write_text(json.dumps(running))
    (root / "never_started" / ".hydra").mkdir(parents=True)

    assert report_main([str(root)]) == 0
    assert f"report written to {root / 'report.html'}" in capsys.readouterr().out
    rows = {(r["job"], r["trial"]): r for r in read_csv(root / "trials.csv")}
    assert len(rows) == 6
    assert rows[(job.name, "7")]["status"] == "unreadable" and "unreadable" in rows[(job.name, "7")]["error"]
    assert rows[(job.name, "8")]["status"] == "crashed" and rows[(job.name, "8")]["rank"] == ""
    assert rows[(job.name, "8")]["epochs"] == "1" and rows[(job.name, "8")]["val_accuracy"] != ""
    jobs = {j.name: j for j in load_sweep(root).jobs}
    assert jobs[job.name].status == "crashed" and jobs["never_started"].status == "not started"
    html = (root / "report.html").read_text()
    assert "the process running this job is gone" in html and "never_started" in html


@pytest.mark.slow
def test_a_running_job_is_not_called_crashed(sweep, tmp_path: Path) -> None:
    source, _ = sweep
    root = tmp_path / "running"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("tensorboard", "tuner", "*.keras", "report.*"))
    job = next(root.glob("augmentation=none*"))
    record = json.loads((job / "job.json").read_text())
    record.update(status="running", pid=os.getpid(), host=socket.gethostname())
    (job / "job.json").write_text(json.dumps(record))
    assert {j.name: j.status for j in load_sweep(root).jobs}[job.name] == "running"


def test_report_of_a_missing_or_empty_folder_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nope'} is not a folder")
    assert report_main([str(tmp_path)]) == 1
    assert "no tlsweep jobs under" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def epoch(n: int, loss: float, acc: float, val_loss: float, val_acc: float, stage: str = "head") -> dict:
    return {"epoch": n, "stage": stage, "loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc}


def epochs(*entries: dict) -> list[Epoch]:
    return [Epoch(**e) for e in entries]


def test_overfitting_is_flagged_when_val_loss_rises_while_the_gap_grows() -> None:
    rising = [
        epoch(1, 1.0, 0.60, 0.90, 0.62),
        epoch(2, 0.6, 0.75, 0.70, 0.72),
        epoch(3, 0.3, 0.90, 0.80, 0.71),
        epoch(4, 0.1, 0.98, 0.95, 0.70),
    ]
    assert "overfits after epoch 2" in overfitting(epochs(*rising))
    improving = [epoch(i, 1 / i, 0.5 + i / 20, 1.2 / i, 0.5 + i / 25) for i in range(1, 6)]
    assert overfitting(epochs(*improving)) is None
    noisy = [*rising[:2], epoch(3, 0.5, 0.76, 0.71, 0.73), epoch(4, 0.45, 0.77, 0.72, 0.73)]  # rise, gap flat
    assert overfitting(epochs(*noisy)) is None


def test_accuracy_interval_narrows_with_more_images() -> None:
    low_small, high_small = accuracy_interval(0.8, 50)
    low_big, high_big = accuracy_interval(0.8, 5000)
    assert low_small < low_big < 0.8 < high_big < high_small
    assert accuracy_interval(1.0, 10)[0] >= 0.0 and accuracy_interval(1.0, 10)[1] == pytest.approx(1.0)


def fake_sweep(root: Path, backbones: int, trials_per_job: int) -> Path:
    """A sweep folder of hand-written records, shaped as the search writes them."""
    for b in range(backbones):
        job = root / f"backbone=b{b}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- backbone=b{b}\n")
        choices = {"backbone": f"b{b}", "augmentation": "none"}
        records = []
        for t in range(trials_per_job):
            acc = 0.5 + 0.4 * ((b * trials_per_job + t) % 17) / 17
            history = [epoch(1, 1.0, acc - 0.1, 1.1, acc - 0.05), epoch(2, 0.8, acc, 0.9, acc, "finetune")]
            record = {
                "trial_id": str(t), "status": "completed", "choices": choices, "objective": "val_accuracy",
                "hyperparameters": {"finetune.learning_rate": 10 ** -(2 + t % 3) * (1 + t / 10),
                                    "finetune.optimizer": "adam", "finetune.unfreeze_depth": t % 4},
                "history": history, "best_epoch": 2, "val_accuracy": acc, "val_loss": 0.9, "rolled_back": False,
                "stages": {"head": {"value": acc - 0.05, "epoch": 1}, "finetune": {"value": acc, "epoch": 2}},
                "duration_s": 1.0, "data": {"classes": ["a", "b"], "train_images": 80, "val_images": 20},
            }  # fmt: skip
            (job / "trials").mkdir(exist_ok=True)
            (job / "trials" / f"trial_{t}.json").write_text(json.dumps(record))
            records.append(record)
        (job / "job.json").write_text(json.dumps({"status": "completed", "choices": choices, "duration_s": 5.0}))
    return root


def test_a_big_sweep_stays_readable(tmp_path: Path) -> None:
    root = fake_sweep(tmp_path / "big", backbones=12, trials_per_job=9)
    paths = build_report(root)
    assert len(read_csv(paths["csv"])) == 108
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 3
    summary = summarize(load_sweep(root))
    assert len(_series(summary.ranked, "backbone")) == MAX_LEGEND + 1  # 12 backbones: 8 named, the rest merged
    effects = {(e.group, e.value): e for e in summary.effects}
    assert effects[("backbone", "b0")].trials == 9 and ("augmentation", "none") not in effects  # constant: no effect
    assert "The same in every trial: augmentation=none" in paths["md"].read_text()
    jobs_row = r"\| backbone=b0 \| completed \| 9 \| 9 \| [0-9.]+ \| 5(\.0)? "  # its trials, best and time
    assert re.search(jobs_row, paths["md"].read_text())
