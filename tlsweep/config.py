"""Checks on the composed config, so a mistake fails in a second with one clear line, not mid-sweep."""

from __future__ import annotations

import hashlib
import re

from omegaconf import DictConfig, OmegaConf

from tlsweep.errors import TlsweepError

FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
SAMPLINGS = ("log", "linear")


def register_resolvers() -> None:
    """Resolvers the configs use; registered before Hydra composes them."""
    if not OmegaConf.has_resolver("tlsweep_job_dir"):
        OmegaConf.register_new_resolver("tlsweep_job_dir", job_dir_name)


def job_dir_name(override_dirname: str, job_num: int) -> str:
    """A readable, safe folder name for a multirun job, e.g. ``backbone=resnet``."""
    name = re.sub(r"[/\\:*?\"<>|\s]+", "_", str(override_dirname)).strip("._") or f"job{job_num}"
    if len(name) > 120:
        name = f"{name[:100]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def validate(cfg: DictConfig) -> None:
    """Raise TlsweepError naming the first invalid setting and how to fix it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = " (e.g. dataset.path=path/to/images)" if "dataset.path" in missing else ""
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

    tuner = cfg.tuner
    if tuner.name not in TUNER_NAMES:
        raise TlsweepError(f"tuner.name={tuner.name} must be one of: {', '.join(TUNER_NAMES)}")
    if tuner.name != "hyperband" and tuner.max_trials < 1:
        raise TlsweepError(f"tuner.max_trials={tuner.max_trials} must be at least 1")


def check_depths(cfg: DictConfig, num_layers: int, backbone: str) -> None:
    """Unfreeze depths must fit inside the backbone."""
    if cfg.finetune.mode != "top":
        return
    too_deep = [d for d in cfg.search.unfreeze_depths if d > num_layers]
    if too_deep:
        raise TlsweepError(
            f"search.unfreeze_depths has {too_deep[0]}, but backbone {backbone} has only {num_layers} layers; "
            f"use depths up to {num_layers} (or finetune=full to unfreeze all)"
        )
