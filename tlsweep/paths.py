"""Where results go: the folders of runs, sweeps and jobs, named as Hydra asks the resolvers to.

``conf/config.yaml`` names ``hydra.run.dir`` and ``hydra.sweep.dir`` through ``tlsweep_output_dir``
(a new folder, or the one ``resume`` names) and each job of a sweep through ``tlsweep_job_dir``
(the values it sweeps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tlsweep.config import (
    SEARCH_PARAMS,
    fixed_keys,
    hydra_quoted,
    run_key,
    search_space_arguments,
    split_override,
    unquoted,
)
from tlsweep.errors import TlsweepError
from tlsweep.files import JOB_RECORD
from tlsweep.records import RecordError, read_job
from tlsweep.schema import register_schema

COMMAND_LINE_VARIABLE = "TLSWEEP_COMMAND_LINE"  # the command line, for jobs that run in other processes
RESULT_VARIABLE = "TLSWEEP_RESULT_FILE"  # where a run writes its (or its sweep's) folder: tlsweep.sweep reads it


def register_resolvers() -> None:
    """The schema and the resolvers the configs use; registered before Hydra composes them."""
    register_schema()
    if not OmegaConf.has_resolver("tlsweep_job_dir"):
        OmegaConf.register_new_resolver("tlsweep_job_dir", job_dir_name)
    if not OmegaConf.has_resolver("tlsweep_output_dir"):  # cached: every job of a sweep gets the same folder
        OmegaConf.register_new_resolver("tlsweep_output_dir", output_dir, use_cache=True)


def output_dir(kind: str, resume: Any, stamp: str, outputs: str = "outputs") -> str:
    """The folder of a run or sweep (``kind``: runs or sweeps).

    ``resume`` false: a new folder ``outputs/<kind>/<stamp>`` (``_1``, ``_2``… if it exists, so
    nothing earlier is overwritten); true: the newest existing folder of that kind; else the
    folder it names, which must exist.
    """
    base = Path(outputs) / kind
    if resume is None or resume is False or str(resume).lower() == "false":
        path, n = base / stamp, 1
        while path.exists():
            path, n = base / f"{stamp}_{n}", n + 1
        return str(path)
    if resume is True or str(resume).lower() == "true":
        newest = newest_unfinished(base)
        return str(newest) if newest is not None else str(base / stamp)
    if not Path(str(resume)).is_dir():
        raise TlsweepError(f"resume={resume} is not a folder; give a folder under {base} or resume=true for the newest")
    return str(resume)


MULTIRUN_RECORD = "multirun.yaml"  # Hydra writes it in a sweep's folder when the sweep starts


def is_sweep(folder: Path) -> bool:
    """Whether ``folder`` is a sweep's folder (Hydra's ``multirun.yaml`` is in it), not a run's or a job's."""
    return (Path(folder) / MULTIRUN_RECORD).is_file()


def resume_target(value: str, multirun: bool) -> Path:
    """The folder ``resume=<value>`` continues: a sweep's folder with ``-m``, a run's without. A job folder of a
    sweep given with ``-m`` continues its sweep; any other mismatch is refused in one line naming the folder
    to give (a job folder taken for a sweep's would start fresh searches inside it)."""
    folder = Path(value).expanduser()
    kind = "sweeps" if multirun else "runs"
    if not folder.is_dir():
        raise TlsweepError(
            f"resume={value} is not a folder; give a folder under outputs/{kind}, or resume=true for the newest"
        )
    folder = folder.resolve()
    holds_job = (folder / JOB_RECORD).is_file() or (folder / ".hydra").is_dir()
    in_sweep = holds_job and is_sweep(folder.parent)
    if multirun and in_sweep:
        return folder.parent
    if multirun and not is_sweep(folder):
        raise TlsweepError(
            f"resume={value} is {'a single run' if holds_job else 'no sweep'}'s folder, and -m continues a sweep: "
            + ("resume it without -m" if holds_job else "give a folder under outputs/sweeps")
        )
    if not multirun and in_sweep:
        raise TlsweepError(
            f"resume={value} is one job of the sweep {folder.parent}: continue the sweep with its command, "
            f"-m and resume={folder.parent}"
        )
    if not multirun and is_sweep(folder):
        raise TlsweepError(f"resume={value} is a sweep's folder: continue it with its command and -m")
    return folder


def hydra_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """The command line as Hydra is to parse it, and what to tell the user about it: the values tlsweep takes
    first (``search.params.*``, KerasTuner's search space; ``resume``, a folder) quoted for Hydra."""
    return resume_argument(search_space_arguments(args))


def resume_argument(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with a ``resume=<folder>`` taken before Hydra parses it: checked (``resume_target``) and quoted
    for Hydra, so a folder's name may hold anything (``=``, spaces, quotes) unquoted on the command line; and
    what to tell the user about it."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    out, notes = [], []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "resume" and value.lower() not in ("true", "false", "null", ""):
            value = unquoted(value)
            target = resume_target(value, multirun)
            if target != Path(value).expanduser().resolve():
                notes.append(f"resume: {Path(value).name} is one job of the sweep {target}: continuing the sweep")
            arg = f"{key}={hydra_quoted(str(target))}"
        out.append(arg)
    return out, notes


def newest_unfinished(base: Path) -> Path | None:
    """The run or sweep under ``base`` that ``resume=true`` continues: the most recently started one
    that has a job not completed, else the most recently started one. Start times come from the jobs'
    records (a folder's modification time changes whenever a report is rebuilt)."""
    found = []
    for folder in (p for p in Path(base).glob("*") if p.is_dir()):
        records = []
        for job in [folder, *(p.parent for p in folder.glob(f"*/{JOB_RECORD}"))]:
            try:
                record = read_job(job)
            except RecordError:
                continue
            if record is not None:
                records.append(record)
        started = min((r.started for r in records), default="") or folder.name
        unfinished = not records or any(r.status != "completed" for r in records)
        found.append((unfinished, started, folder.name, folder))
    return max(found)[3] if found else None


def job_dir_name(task_overrides: list[str], job_num: int, command_line: list[str] | None = None) -> str:
    """A readable, safe folder name for a multirun job from the values it sweeps, e.g. ``backbone=resnet``.

    Overrides given once on the command line for every job are left out: they are the same in all
    jobs and would only make every name long. ``command_line`` defaults to the one ``tlsweep`` was
    started with, which launchers that run jobs in other processes pass on in ``$TLSWEEP_COMMAND_LINE``.
    """
    if command_line is None:
        passed = os.environ.get(COMMAND_LINE_VARIABLE)
        command_line = json.loads(passed) if passed else sys.argv[1:]
    fixed = fixed_keys(command_line)
    keys = [(str(o), split_override(str(o))[0]) for o in task_overrides]  # the search space never names a job
    named = [o for o, key in keys if not run_key(key) and key not in fixed and not key.startswith(SEARCH_PARAMS)]
    parts = ",".join(sorted(named))
    name = re.sub(r"[/\\:*?\"<>|\s]+", "_", parts).strip("._") or f"job{job_num}"
    if parts and (name != parts or len(name) > 120):  # characters replaced: a digest of the values keeps names unique
        name = f"{name[:100]}_{hashlib.sha1(parts.encode()).hexdigest()[:8]}"
    return name


def tensorboard_logdir(root: Path) -> Path:
    """The folder to give ``tensorboard --logdir`` for a run or sweep: the ``outputs`` folder it is in
    (every trial of every sweep in one table), else the run's or sweep's own folder. Absolute."""
    root = Path(root).resolve()
    return next((p for p in (root, *root.parents) if p.name == "outputs"), root)


def shown(path: Path) -> str:
    """A path as the user would type it here: relative to the working folder when under it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def folder_command(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a command that works on one run's or sweep's folder."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("folder", type=Path, help="a sweep folder (outputs/sweeps/<time>) or a run folder")
    return parser


def jobs_at_once() -> int:
    """How many jobs a parallel launcher runs side by side on this machine (they share its memory)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return max(int(HydraConfig.get().launcher.get("n_jobs") or 1), 1)
    except (ValueError, AttributeError, TypeError):  # not run by Hydra, or a launcher without n_jobs
        return 1
