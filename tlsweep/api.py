"""tlsweep from Python and notebooks: ``sweep`` runs what ``python -m tlsweep`` runs, ``load`` reads what it left.

``sweep`` runs the same command line in a fresh Python process — the same config composition and
checks, folders, records and outputs — so a notebook's own process never holds TensorFlow's state,
its standard output or a ``sys.exit``, and a cell can run twice with nothing carried over. Hydra 1.3
has no public call to run an app from Python; a process of its own is also what a long sweep wants.
The progress shows as a progress bar (a notebook's own in Jupyter), the closing line as text.

A ``Result`` reads the records of a run or sweep: finished, still running, stopped or killed.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.callbacks import winner_line
from tlsweep.console import native_quiet
from tlsweep.errors import TlsweepError
from tlsweep.paths import RESULT_VARIABLE, tensorboard_logdir
from tlsweep.results import Sweep, load_sweep, winner

TRIAL = re.compile(r"^(trial_\S+) \((\d+) of (\d+)\)")  # a search trial's lines: "trial_3 (4 of 6) …"


@dataclass(frozen=True)
class Answer:
    """What a run or sweep answers: its winning configuration and the model that ships.

    ``str()`` is the closing ``best:`` line's summary, the same for a ``sweep`` and its ``load``."""

    job: str  # the job it won in (a run's own folder name)
    configuration: dict[str, Any]  # the hyperparameters: each searched (or pinned) setting's value
    objective: str
    mean: float  # the configuration's mean over its seeds (its one run's value without finalists)
    interval: tuple[float, float] | None  # the 95% interval of that mean (None without finalists)
    run: str  # the run whose model ships (its seed closest to the mean, or its refit)
    test_accuracy: float | None  # on the held-out examples, once exported
    line: str = field(repr=False)

    def __str__(self) -> str:
        return self.line


class Result:
    """A run's or sweep's results, read from its folder (``tlsweep.load``, or what ``tlsweep.sweep`` returns).

    Every attribute reads the files again: a result of a sweep that still runs shows how far it is."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._predictor: tuple[float, Any] | None = None  # (the export record's mtime, its loaded model)

    def __repr__(self) -> str:
        return f"tlsweep.Result({str(self.path)!r})"

    @property
    def sweep(self) -> Sweep:
        return load_sweep(self.path)

    @property
    def status(self) -> dict[str, str]:
        """Each job's status, by job: running, completed, stopped, interrupted, failed, crashed (killed), …"""
        return {job.name: job.status for job in self.sweep.jobs}

    @property
    def winner(self) -> Answer | None:
        """The answer (``tlsweep.results.winner``); None while no run has completed."""
        sweep = self.sweep
        found = winner(sweep)
        if found is None:
            return None
        test = (sweep.evaluation or {}).get("accuracy")
        line = (winner_line(self.path) or "").removeprefix("best: ")
        return Answer(found.job.name, dict(found.run.run.hyperparameters), found.objective.name, found.value,
                      found.interval, found.model.trial_id, test, line)  # fmt: skip

    @property
    def trials(self) -> Any:
        """Every run as a ``pandas.DataFrame``: one row per run, the columns of ``trials.csv``, best first."""
        import pandas as pd

        from tlsweep.report.summary import summarize

        table = summarize(self.sweep).table
        return pd.DataFrame(table.rows, columns=table.columns)

    @property
    def finalists(self) -> Any:
        """The finalists: each configuration run over several seeds, its mean and the 95% interval of that mean,
        and its verdict (best, within noise of the best, behind the best); empty without finalists."""
        import pandas as pd

        from tlsweep.report.summary import summarize

        rows = [f.__dict__ for f in summarize(self.sweep).finalists]
        return pd.DataFrame(rows, columns=["job", "trial", "runs", "mean", "low", "high", "worst", "best", "verdict"])

    @property
    def race(self) -> list[str] | None:
        """What the race did with each job (``hydra/sweeper=race``), a line each; None outside a race."""
        race = self.sweep.race
        return race.lines() if race is not None else None

    @property
    def report(self) -> Path | None:
        path = self.path / "report.html"
        return path if path.is_file() else None

    @property
    def logdir(self) -> Path:
        """What to give ``tensorboard --logdir`` (in a notebook: ``%tensorboard --logdir …``)."""
        return tensorboard_logdir(self.path)

    @property
    def export(self) -> Path | None:
        path = self.path / files.EXPORT_DIR
        return path if (path / files.EXPORT_RECORD).is_file() else None

    @property
    def model(self) -> Any:
        """The winner's Keras model: the exported one (augmentation off), else the job's ``best.keras``."""
        found = winner(self.sweep)
        if found is None:
            raise TlsweepError(f"{self.path} has no completed run yet: no model")
        path = self.export / "model.keras" if self.export is not None else found.job.path / files.BEST_MODEL
        with native_quiet():
            from tlsweep.tasks import load_classifier

            return load_classifier(path)

    def predict(self, inputs: Any, top_k: int = 3) -> Any:
        """The top classes of new examples with the exported model, as a ``pandas.DataFrame`` (one row each): image
        or text files, folders of them, tables of texts, or texts themselves (for a text model)."""
        import pandas as pd

        from tlsweep.predict import load_predictor, predict_paths

        if self.export is None:
            raise TlsweepError(f"{self.path} has no exported model: python -m tlsweep.export {self.path}")
        stamp = (self.export / files.EXPORT_RECORD).stat().st_mtime
        if self._predictor is None or self._predictor[0] != stamp:  # loaded once, again after a new export
            with native_quiet():
                self._predictor = (stamp, load_predictor(self.export))
        predictor = self._predictor[1]
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        paths = [Path(i) for i in items if isinstance(i, Path) or Path(str(i)).exists()]
        texts = [str(i) for i in items if not isinstance(i, Path) and not Path(str(i)).exists()]
        if texts and predictor.record.get("task") != "text":
            raise TlsweepError(f"{texts[0]!r} is not a file or folder; an image model classifies image files")
        rows = []
        with native_quiet():  # the model's first call initialises the devices
            results, unreadable = predict_paths(predictor, paths) if paths else ([], [])
            if texts:
                import numpy as np

                results += list(zip(texts, predictor(np.array(texts, dtype=object)), strict=True))
        for name, probabilities in results:
            order = probabilities.argsort()[::-1][:top_k]
            row: dict[str, Any] = {"input": name}
            for rank, index in enumerate(order, 1):
                row[f"class_{rank}"], row[f"probability_{rank}"] = predictor.classes[index], float(probabilities[index])
            rows.append(row)
        rows += [{"input": name, "error": "unreadable"} for name in unreadable]
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        from tlsweep.report.render import summary_html
        from tlsweep.report.summary import summarize

        return summary_html(summarize(self.sweep))


class SweepError(TlsweepError):
    """What ``tlsweep.sweep`` raises for a run that did not finish: the command line's ``error:`` line, and in
    ``path`` the run's or sweep's folder, when it made one (``tlsweep.load(error.path)`` reads what it kept)."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


def load(folder: str | Path) -> Result:
    """The results of a run or sweep already on disk: finished, still running, stopped or killed."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise TlsweepError(f"{path} is not a folder; give a run's or sweep's folder under outputs/")
    if not load_sweep(path).jobs:
        raise TlsweepError(f"{path} holds no tlsweep run or sweep (no job.json or .hydra/ found)")
    return Result(path)


def sweep(
    overrides: Sequence[str] = (), multirun: bool = False, cwd: str | Path | None = None, progress: bool = True
) -> Result:
    """Run ``python -m tlsweep [-m] <overrides>`` and return its ``Result``.

    ``overrides`` are Hydra's, spelt as on the command line (``["backbone=tiny", "tuner.max_trials=4",
    "search.params.finetune.dropout=interval(0.1, 0.5)"]``); ``multirun`` is ``-m`` (a race too, with
    ``hydra/sweeper=race``); ``cwd`` is where ``outputs/`` goes (the current folder by default). A user error
    raises ``SweepError`` (a ``TlsweepError``) with the command line's one ``error:`` line, and in its ``path``
    the folder of what was kept, if any. Ctrl-C (a notebook's interrupt) stops the run as on a terminal (every
    finished trial kept, the command to continue printed) and raises KeyboardInterrupt.
    """
    args = ["-m", *overrides] if multirun else list(overrides)
    with tempfile.TemporaryDirectory(prefix="tlsweep-") as scratch:
        said = Path(scratch) / "result"
        env = {**os.environ, RESULT_VARIABLE: str(said), "PYTHONUNBUFFERED": "1"}
        env.pop("HYDRA_FULL_ERROR", None)  # the command line's one-line errors, not Hydra's tracebacks
        command = [sys.executable, "-m", "tlsweep", *args]
        code, errors, tail = _run(command, Path(cwd or "."), env, progress)
        path = Path(said.read_text().strip()) if said.is_file() else None
    if code:
        if errors:
            raise SweepError(errors[0], path)
        raise SweepError(f"python -m tlsweep exited with code {code}; its last lines:\n" + "\n".join(tail), path)
    if path is None:
        raise TlsweepError(f"python -m tlsweep {shlex.join(args)} ran no job (Hydra's --help, --cfg and friends print "
                           "and run nothing): give overrides that run one")  # fmt: skip
    return Result(path)


def _run(command: list[str], cwd: Path, env: dict[str, str], progress: bool) -> tuple[int, list[str], list[str]]:
    """Run ``command``, showing its trials as a progress bar and the lines a user acts on; returns its exit code,
    its ``error:`` lines and its last lines."""
    errors: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=20)
    # A session of its own: Ctrl-C (a terminal's, or a notebook's interrupt sent to the kernel's process group)
    # reaches the run once, from here, so it stops as cleanly as on a terminal.
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    stop = weakref.finalize(process, _stop, process)  # and stopped if this process ends while it runs
    try:
        with _bar(progress) as show:
            for line in process.stdout or []:
                line = line.rstrip("\n")
                tail.append(line)
                if line.startswith("error: "):
                    errors.append(line.removeprefix("error: "))
                show(line)
        return process.wait(), errors, list(tail)
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)  # stops cleanly, keeps every finished trial, says how to continue
        out, _ = process.communicate()
        print(out, end="")
        raise
    finally:
        stop()


def _stop(process: subprocess.Popen) -> None:
    """Stop a run still going (as Ctrl-C does) and wait for it to save what it has."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait()


@contextlib.contextmanager
def _bar(progress: bool) -> Iterator[Any]:
    """A function that shows a line of the run's output: search trials advance a bar (Jupyter's own in a
    notebook), the lines a user acts on (errors, warnings, the closing line) are printed."""
    if importlib.util.find_spec("ipywidgets") is not None:  # tlsweep[notebook]: Jupyter's widget in a notebook
        from tqdm.auto import tqdm
    else:  # a text bar, without tqdm's warning that the widget is missing
        from tqdm import tqdm

    bar: Any = None

    def show(line: str) -> None:
        nonlocal bar
        trial = TRIAL.match(line)
        if trial and progress and (" done in " in line or " pruned " in line or " failed:" in line):
            done, total = int(trial.group(2)), int(trial.group(3))
            if bar is None or bar.total != total or done <= bar.n:  # a sweep's next job: a bar of its own
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, desc="trials", unit="trial", leave=True)
            bar.update(done - bar.n)
        elif line.startswith(("best:", "error:", "interrupted:", "  continue:", "race round")) or "warning" in line:
            print(line, flush=True)

    try:
        yield show
    finally:
        if bar is not None:
            bar.close()
