"""The sweep report: every trial of every job, compared in one page.

Data flow: ``collect`` reads the job folders on disk → ``summary`` ranks the trials and compares
the choices → ``render`` writes ``report.html`` (with ``plots``), ``report.md`` and ``trials.csv``.
The sweep writes it at the end through ``ReportCallback``; ``python -m tlsweep.report DIR``
rebuilds it at any time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlsweep.errors import TlsweepError

log = logging.getLogger(__name__)

DEFAULT_TOP = 5


def build_report(root: Path, top: int = DEFAULT_TOP) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``trials.csv`` into ``root`` from the jobs under it."""
    from tlsweep.report.collect import load_sweep
    from tlsweep.report.render import write_all
    from tlsweep.report.summary import summarize

    root = Path(root)
    if not root.is_dir():
        raise TlsweepError(f"{root} is not a folder; give a sweep folder (outputs/sweeps/<time>) or a run folder")
    sweep = load_sweep(root)
    if not sweep.jobs:
        raise TlsweepError(
            f"no tlsweep jobs under {root} (no job.json or .hydra/ found); "
            "give a sweep folder (outputs/sweeps/<time>) or a run folder (outputs/runs/<time>)"
        )
    return write_all(summarize(sweep), root, top)


class ReportCallback(Callback):
    """Hydra callback: writes the report at the end of a run or a sweep, also when some jobs failed.

    A problem with the report is logged and never fails the sweep: its results are already on disk.
    """

    def __init__(self, enabled: bool = True, top: int = DEFAULT_TOP) -> None:
        self.enabled = enabled
        self.top = top

    def on_run_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if job_return is not None and getattr(job_return, "hydra_cfg", None) is not None:
            self._write(Path(job_return.hydra_cfg.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(Path(config.hydra.sweep.dir))

    def _write(self, root: Path) -> None:
        if not self.enabled:
            return
        try:
            paths = build_report(root, self.top)
        except Exception as e:  # the sweep's results are safe on disk; say how to retry
            log.error("could not write the report (%s); rebuild it with: python -m tlsweep.report %s", e, root)
            return
        log.info("report written to %s (also %s and %s)", paths["html"], paths["md"].name, paths["csv"].name)
