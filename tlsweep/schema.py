"""The config's schema for Hydra, and the one step from a composed config to the job spec.

Hydra composes ``conf/`` on top of ``tlsweep.spec.JobSpec`` (registered as ``tlsweep_schema``, first
in ``conf/config.yaml``'s defaults): every setting, its type and its default are declared there once,
so a key that is not declared (``+tuner.max_trail=3``) or a value of the wrong type
(``tuner.max_trials=abc``) fails while the config is composed, before any folder is made.
``job_spec`` turns a composed config into the typed, frozen ``JobSpec``, which checks the values
themselves; nothing below the job reads the raw config.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from tlsweep.errors import TlsweepError
from tlsweep.spec import MOVED, JobSpec

SCHEMA_NAME = "tlsweep_schema"


def register_schema() -> None:
    """Make ``JobSpec`` the schema ``conf/config.yaml``'s defaults list starts from, and the resolvers its
    options use; call before Hydra composes."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=_writable(OmegaConf.structured(JobSpec)))
    if not OmegaConf.has_resolver("tlsweep_choice"):
        OmegaConf.register_new_resolver("tlsweep_choice", choice_of)


def choice_of(values: Any) -> str:
    """``[adam, sgd]`` → ``choice(adam, sgd)``: a list another setting holds (the loaded optimizers, a
    backbone's suggested depths), as a search space in Hydra's sweep grammar."""
    return f"choice({', '.join(str(v) for v in values)})"


def _writable(node: DictConfig) -> DictConfig:
    """The schema, open to the options Hydra merges into it. OmegaConf marks a frozen dataclass' node
    read-only; the spec's dataclasses are frozen so that nothing below the job changes a setting, not to
    stop Hydra from composing them. ``set_readonly`` is OmegaConf's public switch (``tests/test_config.py``
    fails if a setting can no longer be overridden)."""
    OmegaConf.set_readonly(node, None)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable(child)
    return node


def unknown_key_message(key: str, context: str = "") -> str:
    """``tuner.max_trail`` → a line naming the key, the closest known key, and where to see them all; a key
    that moved → the line that gives its new spelling."""
    key = key.lstrip("+~")
    moved = next((old for old in MOVED if key == old or key.startswith(old + ".")), None)
    if moved:
        return f"{moved} is now {MOVED[moved]}"
    parent, _, name = key.rpartition(".")
    known = _schema_keys(parent)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {'.'.join(filter(None, [parent, close[0]]))}?" if close else ""
    where = f" ({context.rstrip('.')})" if context and key not in context else ""
    return f"unknown config key {key}{where}{hint} (python -m tlsweep --help lists every key)"


def _schema_keys(parent: str) -> list[str]:
    """The keys the schema allows under ``parent`` (a dotted path; "" for the top)."""
    node: Any = JobSpec
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
    for key, value in cfg.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append(path)
            continue
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            found += unknown_keys(value, f"{path}.")
    return found


def job_spec(cfg: DictConfig) -> JobSpec:
    """The typed spec of a composed config, checked: raises TlsweepError naming the first invalid setting."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise TlsweepError(unknown_key_message(unknown[0]))
    return JobSpec.parse(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
