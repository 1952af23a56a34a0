"""What happens when a run or a sweep ends: export the best model (tested on held-out data), then the report.

Hydra calls these after the last job, also when some jobs failed (tlsweep's jobs record their
failure instead of raising). Each step reads what the jobs wrote to disk, and a problem in one
step is logged with the command that retries it; it never fails the sweep, whose results are safe.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("tlsweep")
FAILED_JOBS: list[str] = []  # "job: reason" for each failed job of the sweep that just ended, read from its folder


def failed_jobs(root: Path) -> list[str]:
    """The jobs of a sweep that did not complete, whichever launcher ran them (in this process or not)."""
    from tlsweep.records import load_sweep

    return [f"{job.name}: {job.error}" for job in load_sweep(root).jobs if job.status not in ("completed", "running")]


class SweepEnd(Callback):
    """Export the best trial's model into ``<folder>/best/`` and write the report into ``<folder>``."""

    def __init__(self, export: DictConfig, report: DictConfig) -> None:
        self.export = export
        self.report = report

    def on_run_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if config.get("distributed", {}).get("role") == "worker":  # the chief exports and reports
            return
        if job_return is not None and getattr(job_return, "hydra_cfg", None) is not None:
            self.finish(Path(job_return.hydra_cfg.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
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

                paths = build_report(root, int(self.report.top))
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


def winner_line(root: Path) -> str | None:
    """The closing line: the run's or sweep's best trial, its metric, and where its model and report are."""
    from tlsweep.records import load_sweep
    from tlsweep.report.summary import summarize

    summary = summarize(load_sweep(root))
    best = summary.best
    if best is None:
        return None
    root = Path(root).resolve()
    test = summary.sweep.evaluation
    tested = f", test accuracy {test['accuracy']:.4f}" if test and test.get("images") else ""
    exported = f"; model {root / 'best'}" if summary.sweep.export else ""
    report = f"; report {root / 'report.html'}" if (root / "report.html").is_file() else ""
    job = "" if len(summary.sweep.jobs) == 1 else f"{best['job']} "
    value = f"{best[summary.metric]:.4f}"
    if summary.winner:  # the answer is a configuration over seeds: its mean and interval
        top = summary.finalists[0]
        value = f"{top.mean:.4f} ± {(top.high - top.low) / 2:.4f} over {top.runs} seeds"
    return f"best: {job}trial_{best['trial']} {summary.metric} {value}{tested}{exported}{report}"
