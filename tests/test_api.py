"""tlsweep from Python: ``tlsweep.sweep`` runs what the command line runs, ``tlsweep.load`` reads what it left."""

from __future__ import annotations

import _thread
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, run_cli, start_cli, stop_when, write_image

import tlsweep
from tlsweep.api import _bar
from tlsweep.tasks.images.data import DIGITS_TARGET_CLASSES, load_digits

# two search trials and one finalist seed: a winner with an interval of its mean
ARGS = [*FAST, "finalists.top=1", "finalists.seeds=2"]


def files_of(run: Path) -> set[str]:
    """A run's files, named as a user sees them: TensorBoard's event files by their folder."""
    names = set()
    for path in run.rglob("*"):
        if path.is_file():
            relative = path.relative_to(run)
            names.add(str(relative.parent / "events") if path.name.startswith("events.out") else str(relative))
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same job from the command line, and twice from Python in this process."""
    shell, python = tmp_path_factory.mktemp("shell"), tmp_path_factory.mktemp("python")
    cli = run_cli(ARGS, shell)
    assert cli.returncode == 0, cli.stdout
    stdout, stderr = sys.stdout, sys.stderr
    first = tlsweep.sweep(ARGS, cwd=python)
    second = tlsweep.sweep([*ARGS, "tuner.max_trials=1", "finalists.top=0", "augmentation=none,light"], multirun=True,
                           cwd=python)  # fmt: skip
    assert (sys.stdout, sys.stderr) == (stdout, stderr)  # the caller's streams are left as they were
    (cli_run,) = (shell / "outputs" / "runs").iterdir()
    return {"cli": cli, "cli_run": cli_run, "first": first, "second": second}


pytestmark = pytest.mark.xdist_group("api")  # the runs of the module fixture, made once


@pytest.mark.slow
def test_sweep_runs_the_command_lines_job_into_the_same_folders_and_records(runs: dict) -> None:
    first, cli_run = runs["first"], runs["cli_run"]
    assert first.path.parent.name == "runs" and first.path.parent.parent.name == "outputs"
    assert files_of(first.path) == files_of(cli_run)
    from_cli = pd.read_csv(cli_run / "trials.csv")
    assert list(first.trials.columns) == list(from_cli.columns)
    searched = ["trial", "status", "finetune.unfreeze_depth", "finetune.learning_rate", "finetune.optimizer"]
    assert first.trials[searched].astype(str).equals(from_cli[searched].astype(str))
    loaded = tlsweep.load(cli_run)
    assert first.winner.configuration == loaded.winner.configuration
    assert first.winner.run == loaded.winner.run and first.winner.interval is not None


@pytest.mark.slow
def test_the_winner_reads_as_the_closing_line_for_a_sweep_and_its_load(runs: dict) -> None:
    (line,) = [x for x in runs["cli"].stdout.splitlines() if x.startswith("best: ")]
    assert str(tlsweep.load(runs["cli_run"]).winner) == line.removeprefix("best: ")
    first = runs["first"]
    assert str(first.winner) == str(tlsweep.load(first.path).winner)
    assert str(first.winner).startswith(f"trial_{first.winner.run.split('.')[0]} val_accuracy")
    assert first.winner.test_accuracy is not None and f"test accuracy {first.winner.test_accuracy:.4f}" in str(
        first.winner
    )


@pytest.mark.slow
def test_a_second_sweep_in_one_process_starts_afresh_and_a_multirun_is_a_sweep(runs: dict) -> None:
    first, second = runs["first"], runs["second"]
    assert second.path.parent == first.path.parent.parent / "sweeps"  # -m: a sweep's folder, its jobs inside
    assert second.status == {"augmentation=light": "completed", "augmentation=none": "completed"}
    assert sorted(second.trials["job"]) == ["augmentation=light", "augmentation=none"] and second.finalists.empty
    assert (second.path / "best" / "model.keras").is_file() and second.winner.job in second.status
    assert len(first.trials) == 3 and len(first.finalists) == 1  # the first is left as it was
    assert first.status == {first.path.name: "completed"}


@pytest.mark.slow
def test_a_result_shows_its_answer_in_a_notebook_and_predicts(runs: dict, tmp_path: Path) -> None:
    first = runs["first"]
    html = first._repr_html_()
    assert "Best: <b>trial_" in html and "Held-out test" in html and str(first.path) in html
    assert first.report == first.path / "report.html" and first.export == first.path / "best"
    assert first.logdir.is_dir() and any(first.logdir.rglob("events.out*"))
    images, labels = load_digits(DIGITS_TARGET_CLASSES, 32)
    for i in range(4):
        write_image(tmp_path / f"digit_{i}.png", images[i])
    predictions = first.predict(tmp_path, top_k=2)
    assert len(predictions) == 4 and set(predictions["class_1"]) <= {str(c) for c in DIGITS_TARGET_CLASSES}
    assert np.allclose(predictions["probability_1"] + predictions["probability_2"] <= 1.0 + 1e-6, True)
    model = first.model
    assert model.output_shape[-1] == len(DIGITS_TARGET_CLASSES)
    with pytest.raises(tlsweep.TlsweepError, match="is not a file or folder"):
        first.predict("a text, to an image model")


@pytest.mark.slow
def test_load_reads_a_stopped_and_a_killed_run(tmp_path: Path) -> None:
    args = [*FAST, "tuner.max_trials=4", "finetune.head_epochs=3"]
    for sig, status in ((signal.SIGINT, "interrupted"), (signal.SIGKILL, "crashed")):
        work = tmp_path / status
        work.mkdir()
        process = start_cli(args, work)

        def one_trial_done(work: Path = work) -> bool:
            records = [json.loads(p.read_text()) for p in work.glob("outputs/runs/*/trials/trial_*.json")]
            return any(r["status"] == "completed" for r in records)

        stop_when(process, one_trial_done, sig)
        (run,) = (work / "outputs" / "runs").iterdir()
        result = tlsweep.load(run)
        assert result.status == {run.name: status}
        assert "completed" in set(result.trials["status"]) and len(result.trials) < 4
        assert result.winner is not None and result.export is None and result.report is None
        assert re.match(r"trial_\d+ val_accuracy 0\.\d{4}$", str(result.winner)), str(result.winner)
        assert result.model.output_shape[-1] == len(DIGITS_TARGET_CLASSES)  # the job's best so far


@pytest.mark.slow
def test_an_interrupt_stops_the_run_cleanly_and_is_raised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A notebook's interrupt button (KeyboardInterrupt in the kernel) stops the run as Ctrl-C does."""
    args = [*FAST, "tuner.max_trials=4", "finetune.head_epochs=3"]

    def interrupt_after_one_trial() -> None:
        while not any(
            json.loads(p.read_text())["status"] == "completed" for p in tmp_path.glob("outputs/runs/*/trials/*.json")
        ):
            time.sleep(0.2)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_after_one_trial, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tlsweep.sweep(args, cwd=tmp_path)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert tlsweep.load(run).status == {run.name: "interrupted"}
    assert f"resume={run}" in capsys.readouterr().out  # the command that continues it


@pytest.mark.slow
@pytest.mark.parametrize(
    "override",
    [
        "tuner.max_trails=3",  # a typo
        "search.params.finetune.dropout=interval(0.5)",  # the search space's grammar
        "dataset.path=/nonexistent/images",  # found only when the job reads its data
    ],
)
def test_a_user_error_raises_the_command_lines_error_line(override: str, tmp_path: Path) -> None:
    args = [override] if "dataset" not in override else ["dataset=folder", override, *FAST]
    cli = run_cli(args, tmp_path)
    (line,) = [x for x in cli.stdout.splitlines() if x.startswith("error: ")]
    with pytest.raises(tlsweep.SweepError) as raised:
        tlsweep.sweep(args, cwd=tmp_path)
    assert str(raised.value) == line.removeprefix("error: ")
    assert isinstance(raised.value, tlsweep.TlsweepError)


def test_load_names_a_folder_that_holds_no_run(tmp_path: Path) -> None:
    with pytest.raises(tlsweep.TlsweepError, match="holds no tlsweep run"):
        tlsweep.load(tmp_path)
    with pytest.raises(tlsweep.TlsweepError, match="is not a folder"):
        tlsweep.load(tmp_path / "missing")


def test_progress_is_a_bar_per_job_of_a_sweep(capsys: pytest.CaptureFixture) -> None:
    lines = [f"trial_{i} ({i + 1} of 3) done in 2.0 s: val_accuracy 0.5" for i in range(3)] * 2  # two jobs
    lines += ["warning: class 'x' has 4 training images", "best: trial_2 val_accuracy 0.5000"]
    with _bar(True) as show:
        for line in lines:
            show(line)
    out, err = capsys.readouterr()
    assert err.count("3/3") >= 2 and "4/3" not in err  # each job's bar counts its own trials
    assert out.splitlines() == lines[-2:]  # the lines a user acts on, as they are
