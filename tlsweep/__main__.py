"""``python -m tlsweep``: Hydra composes the config from ``conf/``; ``tlsweep.job`` runs each job.

A user error ends a single run with one line and exit code 1; in a multirun (``-m``) the job
is recorded as failed, the other jobs go on, and the sweep exits 1 at the end (the failures are
read from the job folders, so this holds whichever Hydra launcher ran the jobs).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from tlsweep import (
    files,  # noqa: E402
    interrupt,  # noqa: E402
)
from tlsweep.callbacks import FAILED_JOBS, REFUSED, UNFINISHED  # noqa: E402
from tlsweep.config import check_command_line, check_writable, composition_error, hydra_quoted  # noqa: E402
from tlsweep.console import native_stderr_to  # noqa: E402
from tlsweep.errors import TlsweepError, is_disk_full  # noqa: E402
from tlsweep.files import LOG_FILE  # noqa: E402
from tlsweep.paths import COMMAND_LINE_VARIABLE, RESULT_VARIABLE, hydra_arguments, register_resolvers  # noqa: E402
from tlsweep.schema import job_spec  # noqa: E402

log = logging.getLogger("tlsweep")


def register_plugins() -> None:
    """Make tlsweep's race sweeper known to Hydra. Hydra 1.3 finds plugins by listing the ``hydra_plugins``
    namespace package, which setuptools' editable installs (``pip install -e .``, setuptools ≥ 64) hide from
    the listing (hydra issue #2359; Hydra 1.4 finds plugins by entry points): register it by Hydra's public
    ``Plugins.register`` as well. An install from a wheel is found either way (tests/test_install.py)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.tlsweep_race_sweeper.race_sweeper import RaceSweeper

    Plugins.instance().register(RaceSweeper)


register_resolvers()
register_plugins()
_output_root: list[Path] = []  # the run's or the sweep's folder, for the message after Ctrl-C


@hydra.main(version_base="1.3", config_path="pkg://tlsweep.conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one Hydra job (one KerasTuner search); returns what a sweeper reads of it (None if it failed)."""

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    multirun = hc.mode == RunMode.MULTIRUN
    _output_root[:] = [job_dir.parent if multirun else job_dir]
    if os.environ.get(RESULT_VARIABLE):  # tlsweep.sweep (Python) reads where the results are
        files.write_text(Path(os.environ[RESULT_VARIABLE]), str(_output_root[0].resolve()))
    native_stderr_to(job_dir / LOG_FILE)  # TensorFlow's C++ lines go to the job log, not the terminal
    from tlsweep.job import run_job  # imports TensorFlow: only when a job runs, so --help stays fast

    if cfg.resume and (not multirun or hc.job.num == 0):  # once per sweep
        log.info("resuming %s", _output_root[0])
    try:
        return run_job(job_spec(cfg), job_dir, choices, root=_output_root[0]).result()
    except TlsweepError as e:
        log.error("error: %s", e)
        if not multirun:
            discard_if_unstarted(job_dir)
            sys.exit(1)
        REFUSED.append(f"{job_dir.name}: {e}")
    except Exception as e:  # a bug in one job must not stop the other jobs of a sweep
        if is_disk_full(e):
            log.error("error: the disk is full (%s); finished results are kept: free space, then resume=true", e)
            if not multirun:
                sys.exit(1)
            return None
        if not multirun:
            raise
        log.exception("job %s failed", job_dir.name)
    return None


def cli() -> None:
    """Entry point of ``python -m tlsweep`` and the ``tlsweep`` command."""
    given = sys.argv[1:]
    try:
        sys.argv[1:], notes = hydra_arguments(given)  # the values tlsweep takes before Hydra parses them
        for note in notes:
            print(note)
        check_command_line(sys.argv[1:])  # a typo or a wrong type: one line, before any folder is made
        check_writable(sys.argv[1:])
    except TlsweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    os.environ[COMMAND_LINE_VARIABLE] = json.dumps(sys.argv[1:])  # for jobs a launcher runs in other processes
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it would print with a traceback: said here in one line
    try:
        with interrupt.handled():
            main()
    except KeyboardInterrupt:
        root = _output_root[0] if _output_root else Path("outputs")
        print(interrupted_message(given, root), file=sys.stderr)
        sys.exit(130)
    except TlsweepError as e:  # refused around the jobs (a race that cannot start)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (HydraException, OmegaConfBaseException) as e:  # Hydra's own settings (a launcher's), not checked before
        print(f"error: {composition_error(e)}", file=sys.stderr)
        sys.exit(1)
    failed = [*FAILED_JOBS, *(r for r in REFUSED if r not in FAILED_JOBS)]
    if failed:
        print(f"{len(failed)} job(s) failed:", *failed, sep="\n  ", file=sys.stderr)
    if failed or UNFINISHED:  # each said why, in its error: line
        sys.exit(1)


def discard_if_unstarted(run_dir: Path) -> None:
    """Remove the folder of a single run refused before it computed anything (its one ``error:`` line said
    why): an empty run is no result, and ``resume=true`` must not take it for the newest run to continue."""
    from tlsweep.records import RecordError, read_job

    try:
        record = read_job(run_dir)
    except RecordError:
        return
    made = {files.JOB_RECORD, files.JOB_LOCK, LOG_FILE, ".hydra"}
    mine = record is not None and record.status == "failed" and record.pid == os.getpid()
    if mine and all(p.name in made for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def interrupted_message(args: list[str], root: Path) -> str:
    """What to print after Ctrl-C: where the finished trials are, and the commands (quoted for Hydra and for
    the shell, so they can be pasted whatever the folder's name) that continue the run and report on it."""
    kept = [a for a in args if not a.startswith("resume=")]
    again = shlex.join(["python", "-m", "tlsweep", *kept, f"resume={hydra_quoted(str(root))}"])  # for Hydra too
    return (
        f"interrupted: finished trials are kept in {root}\n"
        f"  continue: {again}\n"
        f"  report on them: {shlex.join(['python', '-m', 'tlsweep.report', str(root)])}"
    )


if __name__ == "__main__":
    cli()
