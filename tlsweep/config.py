"""Checks on the composed config, so a mistake fails in a second with one clear line, not mid-sweep."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from tlsweep.errors import TlsweepError

FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
SAMPLINGS = ("log", "linear")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMMAND_LINE_VARIABLE = "TLSWEEP_COMMAND_LINE"  # the command line, for jobs that run in other processes


def register_resolvers() -> None:
    """Resolvers the configs use; registered before Hydra composes them."""
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
        existing = sorted((p for p in base.glob("*") if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
        return str(existing[-1]) if existing else str(base / stamp)
    if not Path(str(resume)).is_dir():
        raise TlsweepError(f"resume={resume} is not a folder; give a folder under {base} or resume=true for the newest")
    return str(resume)


def job_dir_name(task_overrides: list[str], job_num: int, command_line: list[str] | None = None) -> str:
    """A readable, safe folder name for a multirun job from the values it sweeps, e.g. ``backbone=resnet``.

    Overrides given once on the command line for every job are left out: they are the same in all
    jobs and would only make every name long. ``command_line`` defaults to the one ``tlsweep`` was
    started with, which launchers that run jobs in other processes pass on in ``$TLSWEEP_COMMAND_LINE``.
    """
    if command_line is None:
        passed = os.environ.get(COMMAND_LINE_VARIABLE)
        command_line = json.loads(passed) if passed else sys.argv[1:]
    fixed = _fixed_keys(command_line)
    parts = sorted(str(o) for o in task_overrides if split_override(str(o))[0] not in fixed)
    name = re.sub(r"[/\\:*?\"<>|\s]+", "_", ",".join(parts)).strip("._") or f"job{job_num}"
    if len(name) > 120:
        name = f"{name[:100]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def split_override(override: str) -> tuple[str, str]:
    """``(key, value)`` of a Hydra override, e.g. ``("backbone", "resnet")``; ``+a.b=1`` sets ``a.b``."""
    try:
        parsed = OverridesParser.create().parse_override(override)
        return parsed.key_or_group, parsed.get_value_element_as_str()
    except OverrideParseException:
        key, _, value = override.partition("=")
        return key.lstrip("+~"), value


def _fixed_keys(command_line: list[str]) -> set[str]:
    """Keys of the command line's overrides that are not sweeps (``a=1`` but not ``a=1,2``)."""
    parser = OverridesParser.create()
    fixed = set()
    for arg in command_line:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except OverrideParseException:
            continue
        if not override.is_sweep_override():
            fixed.add(override.key_or_group)
    return fixed


def validate(cfg: DictConfig) -> None:
    """Raise TlsweepError naming the first invalid setting and how to fix it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hints = {
            "dataset.path": " (e.g. dataset.path=path/to/images)",
            "backbone.handle": " (a tfhub.dev or Kaggle Models URL, or a SavedModel folder)",
        }
        hint = hints.get(missing[0], "")
        raise TlsweepError(f"{missing[0]} must be set{hint}")

    lr = cfg.search.learning_rate
    if not (isinstance(lr.min, (int, float)) and isinstance(lr.max, (int, float))) or lr.min <= 0:
        raise TlsweepError(
            f"search.learning_rate.min={lr.min} and max={lr.max} must be positive numbers, e.g. min=1e-4 max=1e-2"
        )
    if lr.min > lr.max:
        raise TlsweepError(f"search.learning_rate.min={lr.min} is larger than max={lr.max}; swap them")
    if lr.sampling not in SAMPLINGS:
        raise TlsweepError(f"search.learning_rate.sampling={lr.sampling} must be one of: {', '.join(SAMPLINGS)}")

    loaded = list(cfg.optimizer.keys())
    optimizers = list(cfg.search.optimizers)
    if not optimizers:
        raise TlsweepError(f"search.optimizers is empty; choose from {loaded}")
    for name in optimizers:
        if name not in loaded:
            raise TlsweepError(
                f"search.optimizers names '{name}', which is not loaded; "
                f"load it with optimizer=[{','.join([*loaded, name])}] (loaded: {', '.join(loaded)})"
            )

    ft = cfg.finetune
    if ft.mode not in FINETUNE_MODES:
        raise TlsweepError(f"finetune.mode={ft.mode} must be one of: {', '.join(FINETUNE_MODES)}")
    if ft.head_epochs < 1:
        raise TlsweepError(f"finetune.head_epochs={ft.head_epochs} must be at least 1")
    if ft.mode != "none" and ft.finetune_epochs < 1:
        raise TlsweepError(
            f"finetune.finetune_epochs={ft.finetune_epochs} must be at least 1 with finetune={ft.mode}; "
            "use finetune=none for feature extraction only"
        )
    if not 0.0 <= ft.dropout < 1.0:
        raise TlsweepError(f"finetune.dropout={ft.dropout} must be in [0, 1)")
    if ft.lr_scale <= 0:
        raise TlsweepError(f"finetune.lr_scale={ft.lr_scale} must be positive, e.g. 0.1")

    if ft.mode == "top":
        depths = list(cfg.search.unfreeze_depths)
        if not depths or any(not isinstance(d, int) or d < 0 for d in depths):
            raise TlsweepError(
                f"search.unfreeze_depths={depths} must be a non-empty list of whole numbers ≥ 0, e.g. [0,5,10]"
            )

    if cfg.precision not in PRECISIONS:
        raise TlsweepError(f"precision={cfg.precision} must be one of: {', '.join(PRECISIONS)}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise TlsweepError(f"threads={cfg.threads} must be a whole number ≥ 1, or null for all cores")

    tuner = cfg.tuner
    if tuner.name not in TUNER_NAMES:
        raise TlsweepError(f"tuner.name={tuner.name} must be one of: {', '.join(TUNER_NAMES)}")
    if tuner.objective not in OBJECTIVES:
        raise TlsweepError(f"tuner.objective={tuner.objective} must be one of: {', '.join(OBJECTIVES)}")
    if tuner.name != "hyperband" and tuner.max_trials < 1:
        raise TlsweepError(f"tuner.max_trials={tuner.max_trials} must be at least 1")


def check_depths(cfg: DictConfig, num_layers: int, backbone: str, unit: str = "layers") -> None:
    """Unfreeze depths must fit inside the backbone (``unit``: layers, or blocks for a hub model)."""
    if cfg.finetune.mode != "top":
        return
    too_deep = [d for d in cfg.search.unfreeze_depths if d > num_layers]
    if too_deep:
        raise TlsweepError(
            f"search.unfreeze_depths has {too_deep[0]}, but backbone {backbone} has only {num_layers} {unit}; "
            f"use depths up to {num_layers} (or finetune=full to unfreeze all)"
        )
