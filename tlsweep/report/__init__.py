"""The sweep report: every trial of every job, compared in one page.

Data flow: ``tlsweep.records`` reads the job folders on disk → ``summary`` ranks the trials and compares
the choices → ``render`` writes ``report.html`` (with ``plots``), ``report.md`` and ``trials.csv``.
The sweep writes it at the end (``tlsweep.callbacks``); ``python -m tlsweep.report DIR``
rebuilds it at any time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tlsweep.errors import TlsweepError

DEFAULT_TOP = 5
log = logging.getLogger("tlsweep.report")


def build_report(root: Path, top: int = DEFAULT_TOP) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``trials.csv`` into ``root`` from the jobs under it."""
    from tlsweep.report.render import write_all
    from tlsweep.report.summary import summarize
    from tlsweep.results import load_sweep

    root = Path(root)
    if not root.is_dir():
        raise TlsweepError(f"{root} is not a folder; give a sweep folder (outputs/sweeps/<time>) or a run folder")
    sweep = load_sweep(root)
    if not sweep.jobs:
        raise TlsweepError(
            f"no tlsweep jobs under {root} (no job.json or .hydra/ found); "
            "give a sweep folder (outputs/sweeps/<time>) or a run folder (outputs/runs/<time>)"
        )
    for damaged in sweep.damaged:  # named here, as in the report: never left out without a word
        log.warning("%s: %s; left out of the report", root, damaged)
    return write_all(summarize(sweep), root, top)
