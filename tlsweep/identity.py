"""What a job folder is for: the settings that decide its results, and the data it trains on.

A job records both in ``job.json`` when it starts. A job that finds a folder holding another
run refuses it (a new run never continues an old one by accident), and ``resume`` refuses a folder
whose settings or data changed since, saying what changed: trials trained on different data are
never ranked together, and a model is never exported with another dataset's labels.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tlsweep.data import changes, fingerprint
from tlsweep.errors import TlsweepError

# Settings that cannot change a trial's results, or may change on resume by design (more trials).
NOT_IDENTITY = (
    "dataset.workers",
    "tuner.max_trials",
    "tuner.max_consecutive_failed_trials",
)
IDENTITY_GROUPS = ("dataset", "backbone", "augmentation", "optimizer", "finetune", "tuner", "search")
REPLACED_DIR = "replaced"  # where a job's trials go when it restarts on changed data
JOB_OUTPUTS = ("trials", "tensorboard", "tuner", "best.keras", "best.json", "labels.txt")


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """The job's settings that decide its results, flattened (``backbone.name``: ``tiny``), and its data."""
    container = OmegaConf.to_container(cfg, resolve=True)
    settings = {group: container[group] for group in IDENTITY_GROUPS}  # type: ignore[index]
    settings.update(seed=container["seed"], precision=container["precision"])  # type: ignore[index]
    flat = {k: v for k, v in _flatten(settings).items() if k not in NOT_IDENTITY}
    return {"config": flat, "data": fingerprint(cfg.dataset)}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for each setting that differs."""
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(unset)')} → {new.get(k, '(unset)')}" for k in keys]


def check_folder(
    job_dir: Path, previous: dict[str, Any] | None, identity: dict[str, Any], resume: bool, allow_data_change: bool
) -> Path | None:
    """Refuse ``job_dir`` when it holds another run, or (resuming) a run of other settings or other data.

    With ``allow_data_change`` a resumed job whose data changed keeps its earlier trials in
    ``<job>/replaced/<time>/`` and starts its search afresh: that folder is returned.
    """
    if previous is None:
        return None
    started = previous.get("started", "?")
    if not resume:
        raise TlsweepError(
            f"{job_dir} already holds a run (started {started}, {previous.get('status', '?')}); tlsweep never mixes "
            f"two runs in one folder: give a new folder, or continue that run with resume={job_dir}"
        )
    earlier = previous.get("identity")
    if not isinstance(earlier, dict):
        return None  # a job folder from before identities were recorded: nothing to compare
    differences = config_changes(earlier.get("config", {}), identity["config"])
    if differences:
        raise TlsweepError(
            f"{job_dir} holds a run with other settings ({'; '.join(differences[:3])}"
            f"{'; …' if len(differences) > 3 else ''}); resume with the settings it ran with, "
            "or start a new run without resume"
        )
    changed = changes(earlier.get("data", {}), identity["data"])
    if not changed:
        return None
    if not allow_data_change:
        raise TlsweepError(
            f"the data of {job_dir} changed since it ran ({'; '.join(changed[:4])}{'; …' if len(changed) > 4 else ''});"
            " restore the data and resume, or resume with allow_data_change=true to start this job's trials afresh "
            f"(the earlier ones are kept in {job_dir / REPLACED_DIR})"
        )
    return _set_aside(job_dir)


def _set_aside(job_dir: Path) -> Path:
    """Move the job's trials, TensorBoard runs, tuner state and best model into ``replaced/<time>/``."""
    target = job_dir / REPLACED_DIR / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    target.mkdir(parents=True)
    for name in JOB_OUTPUTS:
        if (job_dir / name).exists():
            shutil.move(str(job_dir / name), str(target / name))
    return target
