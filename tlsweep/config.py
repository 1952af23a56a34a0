"""Checks on the composed config, so a mistake fails in a second with one clear line, not mid-sweep."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlsweep.errors import TlsweepError
from tlsweep.settings import register_schema

FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
SAMPLINGS = ("log", "linear")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMMAND_LINE_VARIABLE = "TLSWEEP_COMMAND_LINE"  # the command line, for jobs that run in other processes


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


def newest_unfinished(base: Path) -> Path | None:
    """The run or sweep under ``base`` that ``resume=true`` continues: the most recently started one
    that has a job not completed, else the most recently started one. Start times come from the jobs'
    records (a folder's modification time changes whenever a report is rebuilt)."""
    found = []
    for folder in (p for p in Path(base).glob("*") if p.is_dir()):
        records = []
        for path in [folder / "job.json", *folder.glob("*/job.json")]:
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        records = [r for r in records if isinstance(r, dict)]
        started = min((str(r.get("started", "")) for r in records), default="") or folder.name
        unfinished = not records or any(r.get("status") != "completed" for r in records)
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
    fixed = _fixed_keys(command_line)
    parts = ",".join(sorted(str(o) for o in task_overrides if split_override(str(o))[0] not in fixed))
    name = re.sub(r"[/\\:*?\"<>|\s]+", "_", parts).strip("._") or f"job{job_num}"
    if parts and (name != parts or len(name) > 120):  # characters replaced: a digest of the values keeps names unique
        name = f"{name[:100]}_{hashlib.sha1(parts.encode()).hexdigest()[:8]}"
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


# The options that ask for a multirun; any other option (Hydra's own) leaves the command line to Hydra.
_MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """Each combination of a command line's sweeps (``backbone=a,b``), as plain override lists."""
    return [list(c) for c in itertools.product(*_override_options(overrides))]


def _override_options(overrides: list[str]) -> list[list[str]]:
    """For each override, the plain overrides it stands for: one, or one per value it sweeps."""
    options = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            options.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            options.append([override.input_line])
    return options


def check_command_line(args: list[str]) -> None:
    """Compose and validate the config of every job a command line will run, before any folder is made.

    Raises TlsweepError with one line for an unknown key, a value of the wrong type, an unknown
    group option or an invalid setting. Each value a sweep lists is checked once (with the first
    value of every other sweep), not every combination. Command lines with Hydra's own options
    (``--help``, ``--cfg``, ``-sc`` …) are left to Hydra, as are ``hydra.*`` overrides.
    """
    if any(a.startswith("-") and a not in _MULTIRUN_FLAGS for a in args):
        return
    overrides = [a for a in args if a not in _MULTIRUN_FLAGS and not a.lstrip("+~").startswith("hydra")]
    try:
        options = _override_options(overrides)
    except (OverrideParseException, HydraException) as e:
        raise TlsweepError(_first_line(e)) from e
    from hydra import compose, initialize_config_module

    register_resolvers()
    firsts = [values[0] for values in options]
    combinations = [firsts] + [
        [*firsts[:i], value, *firsts[i + 1 :]] for i, values in enumerate(options) for value in values[1:]
    ]
    with initialize_config_module("tlsweep.conf", version_base="1.3"):
        for combination in combinations:
            try:
                cfg = compose("config", overrides=combination)
            except (HydraException, OmegaConfBaseException) as e:
                raise TlsweepError(composition_error(e)) from e
            validate(cfg)


def check_writable(args: list[str], outputs: Path = Path("outputs")) -> None:
    """Fail in one line, before Hydra makes a folder, when the results could not be written."""
    if any(a.split("=")[0].lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") for a in args):
        return  # the user chose the folder; Hydra says if it cannot make it
    kind = "sweeps" if any(a in _MULTIRUN_FLAGS for a in args) else "runs"
    target = (outputs / kind).resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TlsweepError(
            f"cannot write results under {target}: {existing} is read-only for you; run from a folder you can "
            "write to, or choose one with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> with -m)"
        )


def composition_error(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config."""
    cause = error.__cause__ or error
    message = _first_line(error)
    if isinstance(error, MissingConfigException):
        listed = str(error).partition("Available options")[2].partition("Config search path")[0]
        options = [line.strip() for line in listed.splitlines()[1:] if line.strip()]
        found = re.search(r"Could not find '[^']*'", message)
        return f"{found.group(0) if found else message}; options: {', '.join(options)}" if options else message
    key = getattr(cause, "full_key", None)
    if key and "not in" in _first_line(cause):
        return unknown_key_message(str(key), message)
    override = re.search(r"override (\S+)$", message)
    if override and key:
        return f"{override.group(1)}: {_first_line(cause)}"
    return message if cause is error else f"{message}: {_first_line(cause)}"


def unknown_key_message(key: str, context: str = "") -> str:
    """``tuner.max_trail`` → a line naming the key, the closest known key, and where to see them all."""
    parent, _, name = key.rpartition(".")
    known = _schema_keys(parent)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {'.'.join(filter(None, [parent, close[0]]))}?" if close else ""
    where = f" ({context.rstrip('.')})" if context and key not in context else ""
    return f"unknown config key {key}{where}{hint} (python -m tlsweep --help lists every key)"


def _schema_keys(parent: str) -> list[str]:
    """The keys the schema allows under ``parent`` (a dotted path; "" for the top)."""
    from tlsweep.settings import Config

    node: Any = Config
    for part in filter(None, parent.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return []
        node = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None
        node = type(node) if dataclasses.is_dataclass(node) else None
    return [f.name for f in dataclasses.fields(node)] if node is not None and dataclasses.is_dataclass(node) else []


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys in ``cfg`` that its schema does not declare: Hydra lets ``+key=value`` add them."""
    found = []
    schema = OmegaConf.get_type(cfg)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg:
        path = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append(path)
            continue
        value = cfg._get_node(key)
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            found += unknown_keys(value, f"{path}.")
    return found


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def validate(cfg: DictConfig) -> None:
    """Raise TlsweepError naming the first invalid setting and how to fix it."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise TlsweepError(unknown_key_message(unknown[0]))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if cfg.dataset.name == "folder" and not cfg.dataset.path:
        missing.insert(0, "dataset.path")
    if not cfg.backbone.factory and not cfg.backbone.handle:
        missing.insert(0, "backbone.handle")
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

    if cfg.seed < 0:
        raise TlsweepError(f"seed={cfg.seed} must be a whole number ≥ 0")
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
    if tuner.max_consecutive_failed_trials < 1:
        raise TlsweepError(
            f"tuner.max_consecutive_failed_trials={tuner.max_consecutive_failed_trials} must be at least 1"
        )


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
