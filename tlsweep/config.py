"""The command line: each job's config composed and checked before anything runs; overrides read and
written (the command that reruns a run exactly).

A typo or a wrong type fails in a second with one clear line, before Hydra makes a folder, not
mid-sweep. The rules themselves live in ``tlsweep.spec``.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlsweep.errors import TlsweepError, first_line
from tlsweep.groups import TrainingSpec
from tlsweep.records import RunRecord
from tlsweep.schema import job_spec, register_schema, unknown_key_message
from tlsweep.spec import SET_DIRECTLY, JobSpec


def split_override(override: str) -> tuple[str, str]:
    """``(key, value)`` of a Hydra override, e.g. ``("backbone", "resnet")``; ``+a.b=1`` sets ``a.b``."""
    try:
        parsed = OverridesParser.create().parse_override(override)
        return parsed.key_or_group, parsed.get_value_element_as_str()
    except (OverrideParseException, HydraException):  # not Hydra's grammar, or a search space's expression
        key, _, value = override.partition("=")
        return key.lstrip("+~"), value


def hydra_quoted(value: str) -> str:
    """``value`` as a Hydra override's value that parses back to it, whatever a folder's name holds (spaces,
    commas, ``=``, ``$(…)``, ``${…}``, quotes): as it is when Hydra reads it so, else quoted (Hydra escapes only the
    backslashes before a quote or the end)."""
    literal = value.replace("${", "\\${")  # Hydra's values are interpolated, quoted or not: ``\${`` is a literal ``${``
    try:
        parsed = OverridesParser.create().parse_override(f"key={literal}").value()
        if isinstance(parsed, str) and OmegaConf.create({"key": parsed}).key == value:
            return literal
    except (OverrideParseException, HydraException, OmegaConfBaseException):
        pass
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), literal)
    return f"'{escaped}'"


def run_key(key: str) -> bool:
    """Whether an override says how a job runs (``resume``, a race's ``race.*``), not what it is: such keys
    never name a job's folder, never tell jobs apart in a report, and never belong in a rerun command."""
    key = key.lstrip("+~")
    return key == "resume" or key == "race" or key.startswith(("race.", "hydra."))


def fixed_keys(command_line: list[str]) -> set[str]:
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


def check_command_line(args: list[str]) -> list[JobSpec]:
    """Compose and validate the config of every job a command line will run, before any folder is made.

    Raises TlsweepError with one line for an unknown key, a value of the wrong type, an unknown
    group option or an invalid setting. Each value a sweep lists is checked once (with the first
    value of every other sweep), not every combination. Command lines with Hydra's own options
    (``--help``, ``--cfg``, ``-sc`` …) are left to Hydra, as are ``hydra.*`` overrides. Returns the
    specs it checked.
    """
    if any(a.startswith("-") and a not in _MULTIRUN_FLAGS for a in args):
        return []
    args = search_space_arguments(args)  # KerasTuner's search space, not sweeps of Hydra's
    overrides = [a for a in args if a not in _MULTIRUN_FLAGS and not a.lstrip("+~").startswith("hydra")]
    searchpath = [a for a in args if a.lstrip("+").startswith("hydra.searchpath=")]  # the user's own config groups
    try:
        options = _override_options(overrides)
    except (OverrideParseException, HydraException) as e:
        raise TlsweepError(first_line(e)) from e
    firsts = [values[0] for values in options]
    combinations = [firsts] + [
        [*firsts[:i], value, *firsts[i + 1 :]] for i, values in enumerate(options) for value in values[1:]
    ]
    return [compose_spec([*searchpath, *combination]) for combination in combinations]


def compose_spec(overrides: list[str]) -> JobSpec:
    """The checked spec of the config ``python -m tlsweep <overrides>`` composes (a plain, not a sweep)."""
    from hydra import compose, initialize_config_module

    register_schema()
    with initialize_config_module("tlsweep.conf", version_base="1.3"):
        try:
            cfg = compose("config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise TlsweepError(composition_error(e)) from e
        return job_spec(cfg)


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
    message = first_line(error)
    if isinstance(error, MissingConfigException):
        listed = str(error).partition("Available options")[2].partition("Config search path")[0]
        options = [line.strip() for line in listed.splitlines()[1:] if line.strip()]
        found = re.search(r"Could not find '[^']*'", message)
        return f"{found.group(0) if found else message}; options: {', '.join(options)}" if options else message
    key = getattr(cause, "full_key", None)
    if key and "not in" in first_line(cause):
        return unknown_key_message(str(key), message)
    override = re.search(r"override (\S+)$", message)
    if override and key:
        return f"{override.group(1)}: {first_line(cause)}"
    # a plugin that refused its settings (the race sweeper's eta): its own words, not Hydra's wrapper
    message = re.sub(r"^Error in call to target '[^']*':+\s*", "", message)
    if cause is error:
        return message
    return f"{message}: {first_line(cause)}" if message else first_line(cause)


# Settings that reproduce one run: its hyperparameters become a one-point search.
_PINNED_KEYS = ("search.params", "tuner", "finalists")
SEARCH_PARAMS = "search.params."


def search_space_arguments(args: list[str]) -> list[str]:
    """``args`` with each ``search.params.<key>=<expression>`` taken before Hydra parses it: the expression is
    KerasTuner's to search inside the job, in Hydra's sweep grammar, so to Hydra it is a quoted value (which it
    would otherwise take for a sweep of its own: refused without ``-m``, split into jobs with it). ``++`` sets
    the key whether or not the search space has it already."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+").startswith(SEARCH_PARAMS):
            arg = f"++{key.lstrip('+')}={hydra_quoted(unquoted(value))}"
        out.append(arg)
    return out + direct_settings_pinned(args)


def direct_settings_pinned(args: list[str]) -> list[str]:
    """A knob set directly (``finetune.optimizer=sgd``, or ``-m finetune.dropout=0.1,0.3``: a value per job) is
    taken out of the search, which would otherwise search it and ignore the setting: ``search.params.<key>`` is
    made ``SET_DIRECTLY``, and every trial reads the setting. Not where the command line gives
    ``search.params.<key>`` itself."""
    keys = [arg.partition("=")[0].lstrip("+~") for arg in args if "=" in arg]
    knobs = {f"finetune.{name}" for name in TrainingSpec.knobs()}
    direct = [k for k in keys if k in knobs and f"{SEARCH_PARAMS}{k}" not in keys]
    return [f"++{SEARCH_PARAMS}{k}={SET_DIRECTLY}" for k in dict.fromkeys(direct)]


def unquoted(value: str) -> str:
    """A value the user quoted for Hydra (``'interval(0, 1)'``), as the text it stands for."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        try:
            return str(OverridesParser.create().parse_override(f"key={value}").value())
        except (OverrideParseException, HydraException):
            return value[1:-1]
    return value


def rerun_command(overrides: list[str], run: RunRecord) -> str:
    """``python -m tlsweep …`` that runs a job's config (its command-line ``overrides``) with only this run's
    hyperparameters, each pinned in ``search.params``, and its seed: it trains the same, and gives the same
    metrics on CPU."""
    kept = [o for o in overrides if not _pinned(split_override(o)[0]) and not run_key(split_override(o)[0])]
    pinned = [f"{SEARCH_PARAMS}{key}={_exact(value)}" for key, value in run.hyperparameters.items()]
    pinned += ["tuner=random", "tuner.max_trials=1", "finalists.top=0"]
    if run.replicate:
        pinned.append(f"finalists.replicate={run.replicate}")
    return " ".join(["python -m tlsweep", *(shlex.quote(o) for o in [*kept, *pinned])])


def _exact(value: Any) -> str:
    """A hyperparameter as a value that parses back to exactly it (a float's every digit)."""
    return repr(value) if isinstance(value, float) else str(value)


def _pinned(key: str) -> bool:
    if key == "tuner.objective":
        return False
    return any(key == p or key.startswith(p + ".") for p in _PINNED_KEYS)
