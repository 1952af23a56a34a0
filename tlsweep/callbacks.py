"""What happens when a run or a sweep ends: export the best model (tested on held-out data), then the report.

Hydra calls these after the last job, also when some jobs failed (tlsweep's jobs record their
failure instead of raising). Each step reads what the jobs wrote to disk, and a problem in one
step is logged with the command that retries it; it never fails the sweep, whose results are safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tlsweep.console import native_stderr_to
from tlsweep.files import LOG_FILE
from tlsweep.groups import ExportSpec, ReportSpec, build

log = logging.getLogger("tlsweep")
FAILED_JOBS: list[str] = []  # "job: reason" for each failed job of the sweep that just ended, read from its folder
UNFINISHED: list[str] = []  # what the end of the run or sweep could not do (export, report): the command exits 1
REFUSED: list[str] = []  # "job: reason" for each job of this process's multirun that stopped at its error: line


def failed_jobs(root: Path) -> list[str]:
    """The jobs of a sweep that did not complete, whichever launcher ran them (in this process or not)."""
    from tlsweep.results import load_sweep

    ended = ("completed", "running", "stopped", "paused")  # stopped or paused by a race: not failures
    return [f"{job.name}: {job.error}" for job in load_sweep(root).jobs if job.status not in ended]


def running_elsewhere(root: Path) -> list[str]:
    """The jobs of a sweep that another live process still runs (a second resume of the same sweep), named with
    the process."""
    from tlsweep.results import load_sweep

    jobs = [job for job in load_sweep(root).jobs if job.status == "running" and job.record.pid != os.getpid()]
    return [f"{job.name}: pid {job.record.pid} on {job.record.host or '?'}" for job in jobs]


class SweepEnd(Callback):
    """Export the best trial's model into ``<folder>/best/`` and write the report into ``<folder>``."""

    def __init__(self, export: dict[str, Any], report: dict[str, Any]) -> None:
        self.export: ExportSpec = build(ExportSpec, export)  # conf/config.yaml hands them over as plain dicts
        self.report: ReportSpec = build(ReportSpec, report)

    def on_run_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if config.get("distributed", {}).get("role") == "worker":  # the chief exports and reports
            return
        if job_return is not None and getattr(job_return, "hydra_cfg", None) is not None:
            self.finish(Path(job_return.hydra_cfg.hydra.runtime.output_dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        with own_lines(root / LOG_FILE):
            try:
                FAILED_JOBS[:] = failed_jobs(root)
                elsewhere = running_elsewhere(root)
            except Exception as e:  # e.g. no job folder at all: the exit code then says nothing more
                log.warning("could not read the jobs of %s: %s", root, e)
                elsewhere = []
            if elsewhere:  # its answer is not known yet: the process that runs it exports and reports at its end
                log.error("error: %s still being run by another process (%s); that process exports the best model "
                          "and writes the report when it ends", "job" if len(elsewhere) == 1 else "jobs",
                          "; ".join(elsewhere))  # fmt: skip
                UNFINISHED.append("export and report")
                return
            self.finish(root)

    def finish(self, root: Path) -> None:
        """Export, then report: the report shows the export's test results. A step that fails says so in one
        line with the command that finishes it, and the command exits 1 (``UNFINISHED``); the records stay."""
        folder = shlex.quote(str(root))
        if self.export.enabled:
            try:
                from tlsweep.export import export_best

                export_best(root, self.export)
            except Exception as e:  # the trials are on disk; the export can be redone
                again = f"python -m tlsweep.export {folder} (or the same command with resume=true)"
                _unfinished("export the best model", e, again)
        if self.report.enabled:
            try:
                from tlsweep.report import build_report

                paths = build_report(root, self.report.top)
            except Exception as e:  # the trials are on disk; the report can be rebuilt
                _unfinished("write the report", e, f"python -m tlsweep.report {folder}")
                return
            log.info("report written to %s (also %s and %s)", paths["html"], paths["md"].name, paths["csv"].name)
        try:
            line = winner_line(root)
        except Exception as e:  # a summary line is not worth failing for
            log.warning("could not name the winner of %s: %s", root, e)
            return
        if line:
            log.info("%s", line)


def _unfinished(what: str, error: Exception, again: str) -> None:
    """One line for a step the end of a run could not do, and the command that does it later."""
    from tlsweep.errors import TlsweepError, first_line, is_disk_full

    if is_disk_full(error):
        reason = "the disk is full; free some space"
    elif isinstance(error, TlsweepError):
        reason = str(error)
    else:
        reason = f"{type(error).__name__}: {first_line(error)}"
    log.error("error: could not %s (%s); finish it with: %s", what, reason, again)
    UNFINISHED.append(what)


LIBRARIES = ("tensorflow", "absl", "py.warnings")  # their lines belong in a log, not on the terminal


@contextlib.contextmanager
def own_lines(log_file: Path | None = None) -> Iterator[None]:
    """tlsweep's lines as its own, plain ones, in a multirun's main process (which logs in Hydra's format,
    ``[time][HYDRA]``); with ``log_file``, they are also kept there with their times, and the libraries'
    lines (TensorFlow's C++ and Python ones, warnings) go there only: a launcher that ran the jobs
    elsewhere leaves this process's output unrouted."""
    to_terminal = logging.StreamHandler(sys.stdout)
    to_terminal.setFormatter(logging.Formatter("%(message)s"))
    handlers: dict[str, list[logging.Handler]] = {"tlsweep": [to_terminal]}
    if log_file is not None:
        native_stderr_to(log_file)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        handlers["tlsweep"].append(to_file)
        handlers.update({name: [to_file] for name in LIBRARIES})
    saved = {name: (logging.getLogger(name).propagate, logging.getLogger(name).level) for name in handlers}
    for name, added in handlers.items():
        logger = logging.getLogger(name)
        for handler in added:
            logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, added in handlers.items():
            logger = logging.getLogger(name)
            for handler in added:
                logger.removeHandler(handler)
                handler.flush()
            logger.propagate, logger.level = saved[name]
        if log_file is not None:
            to_file.close()


def winner_line(root: Path) -> str | None:
    """The closing line: the run's or sweep's answer (``tlsweep.results.winner``), and where its model and
    report are."""
    from tlsweep.results import load_sweep, winner

    sweep = load_sweep(root)
    found = winner(sweep)
    if found is None:
        return None
    root = Path(root).resolve()
    test = sweep.evaluation
    tested = f", test accuracy {test['accuracy']:.4f}" if test and test.get("images") else ""
    exported = f"; model {root / 'best'}" if sweep.export else ""
    report = f"; report {root / 'report.html'}" if (root / "report.html").is_file() else ""
    job = "" if len(sweep.jobs) == 1 else f"{found.job.name} "
    return f"best: {job}{found.line()}{tested}{exported}{report}"
