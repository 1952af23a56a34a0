"""The config's schema: every key tlsweep reads and its type; and the one step from config to spec.

Hydra composes ``conf/`` on top of ``Config`` (registered as ``tlsweep_schema``, first in
``conf/config.yaml``'s defaults), so a key that is not here (``+tuner.max_trail=3``) or a value of
the wrong type (``tuner.max_trials=abc``) fails while the config is composed, before any folder
is made. ``job_spec`` turns a composed config into the typed, frozen ``tlsweep.spec.JobSpec``,
which checks the values themselves; nothing below the job reads the raw config. Defaults live in
the YAML files, each with its comment; the defaults here only stand in for keys a group option
leaves out (a tuner's settings that only another tuner uses).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from tlsweep.errors import TlsweepError
from tlsweep.spec import JobSpec

# OmegaConf reads these annotations at run time: Optional[...] and List-free Any are what it understands.
# ruff: noqa: UP007, UP045


@dataclass
class BackboneConfig:
    name: str = MISSING
    factory: Optional[str] = None
    handle: Optional[str] = None
    preset: Optional[str] = None
    pooling: str = "cls"
    weights: Optional[str] = None
    image_size: int = MISSING
    preprocessing: str = MISSING
    unfreeze_depths: list[int] = field(default_factory=list)


@dataclass
class AugmentationConfig:
    flip: Optional[str] = None
    rotation: float = 0.0
    zoom: float = 0.0
    height: float = 0.0
    width: float = 0.0


@dataclass
class FinetuneConfig:
    mode: str = MISSING
    head_epochs: int = MISSING
    finetune_epochs: int = 0
    lr_scale: float = 0.1
    dropout: float = 0.2
    patience: Optional[int] = None


@dataclass
class DatasetConfig:
    name: str = MISSING
    path: Optional[str] = None
    validation_split: float = 0.2
    test_split: float = 0.0
    test: Optional[str] = None
    fraction: float = 1.0
    batch_size: int = 32
    image_size: Optional[int] = None
    seed: int = 0
    workers: int = 4
    data_dir: Optional[str] = None


@dataclass
class TunerConfig:
    name: str = MISSING
    objective: str = "val_accuracy"
    max_trials: Optional[int] = None  # every tuner's file sets it but Hyperband's, which sizes itself
    max_consecutive_failed_trials: int = 3
    num_initial_points: int = 3  # bayesian
    learning_rate_step: Optional[float] = None  # grid
    factor: int = 3  # hyperband
    hyperband_iterations: int = 1  # hyperband


@dataclass
class LearningRateConfig:
    min: float = MISSING
    max: float = MISSING
    sampling: str = "log"


@dataclass
class SearchConfig:
    learning_rate: LearningRateConfig = field(default_factory=LearningRateConfig)
    optimizers: list[str] = field(default_factory=list)
    unfreeze_depths: list[int] = field(default_factory=list)


@dataclass
class PruningConfig:
    rule: str = "none"
    warmup_epochs: int = 1
    min_trials: int = 3
    reduction_factor: int = 3  # asha


@dataclass
class FinalistsConfig:
    top: int = 3
    seeds: int = 3
    replicate: int = 0
    refit: bool = False


@dataclass
class FeatureCacheConfig:
    views: Optional[int] = None
    dtype: str = "float32"
    memory_gb: Optional[float] = None
    max_disk_gb: float = 50.0
    dir: str = "outputs/.cache"


@dataclass
class DistributedConfig:
    role: Optional[str] = None
    chief: str = "localhost:8000"


@dataclass
class RaceConfig:  # set by the race sweeper (hydra/sweeper=race) for each round; not by hand
    round: int = 0  # this round (0: not in a race)
    rounds: int = 0  # the race's rounds: the last runs every trial and the finalists
    eta: int = 3  # each round keeps the best 1/eta of the jobs


@dataclass
class ReportConfig:
    enabled: bool = True
    top: int = 5


@dataclass
class ExportConfig:
    enabled: bool = True
    saved_model: bool = True
    tflite: bool = False
    quantize: str = "none"


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)  # each optimizer's own keyword arguments
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    finalists: FinalistsConfig = field(default_factory=FinalistsConfig)
    budget: Any = None  # a duration: 90s, 30m, 2h, 1h30m, or seconds as a number
    class_weight: Any = None  # balanced, or {class name: weight}
    seed: int = 0
    verbose: bool = True
    cache: bool = True
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    precision: str = "float32"
    jit_compile: bool = False
    gpu_memory_growth: bool = True
    threads: Optional[int] = None
    resume: Any = False  # false, true, or a run's or sweep's folder
    allow_data_change: bool = False
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    race: RaceConfig = field(default_factory=RaceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


SCHEMA_NAME = "tlsweep_schema"


def register_schema() -> None:
    """Make ``Config`` available to ``conf/config.yaml``'s defaults list; call before Hydra composes."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


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
