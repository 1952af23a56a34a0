"""What happens when a run or a sweep ends: export the best model (tested on held-out data), then the report.

Hydra calls these after the last job, also when some jobs failed (tlsweep's jobs record their
failure instead of raising). Each step reads what the jobs wrote to disk, and a problem in one
step is logged with the command that retries it; it never fails the sweep, whose results are safe.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tlsweep.groups import ExportSpec, ReportSpec, part

log = logging.getLogger("tlsweep")
FAILED_JOBS: list[str] = []  # "job: reason" for each failed job of the sweep that just ended, read from its folder


def failed_jobs(root: Path) -> list[str]:
    """The jobs of a sweep that did not complete, whichever launcher ran them (in this process or not)."""
    from tlsweep.results import load_sweep

    return [f"{job.name}: {job.error}" for job in load_sweep(root).jobs if job.status not in ("completed", "running")]


class SweepEnd(Callback):
    """Export the best trial's model into ``<folder>/best/`` and write the report into ``<folder>``."""

    def __init__(self, export: dict[str, Any], report: dict[str, Any]) -> None:
        self.export: ExportSpec = part(ExportSpec, export)  # conf/config.yaml hands them over as plain dicts
        self.report: ReportSpec = part(ReportSpec, report)

    def on_run_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if config.get("distributed", {}).get("role") == "worker":  # the chief exports and reports
            return
        if job_return is not None and getattr(job_return, "hydra_cfg", None) is not None:
            self.finish(Path(job_return.hydra_cfg.hydra.runtime.output_dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        with own_lines():
            try:
                FAILED_JOBS[:] = failed_jobs(root)
            except Exception as e:  # e.g. no job folder at all: the exit code then says nothing more
                log.warning("could not read the jobs of %s: %s", root, e)
            self.finish(root)

    def finish(self, root: Path) -> None:
        """Export, then report: the report shows the export's test results."""
        if self.export.enabled:
            try:
                from tlsweep.export import export_best

                export_best(root, self.export)
            except Exception as e:  # the trials are on disk; the export can be redone
                log.error(
                    "error: could not export the best model (%s); retry with: python -m tlsweep.export %s",
                    e,
                    shlex.quote(str(root)),
                )
        if self.report.enabled:
            try:
                from tlsweep.report import build_report

                paths = build_report(root, self.report.top)
            except Exception as e:  # the trials are on disk; the report can be rebuilt
                log.error(
                    "error: could not write the report (%s); rebuild it with: python -m tlsweep.report %s",
                    e,
                    shlex.quote(str(root)),
                )
                return
            log.info("report written to %s (also %s and %s)", paths["html"], paths["md"].name, paths["csv"].name)
        try:
            line = winner_line(root)
        except Exception as e:  # a summary line is not worth failing for
            log.warning("could not name the winner of %s: %s", root, e)
            return
        if line:
            log.info("%s", line)


@contextlib.contextmanager
def own_lines() -> Iterator[None]:
    """tlsweep's lines as its own, plain ones: a multirun's main process logs in Hydra's format ([time][HYDRA])."""
    logger = logging.getLogger("tlsweep")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level


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
