"""The config's schema: every key tlsweep reads, with its type, as Hydra structured configs.

Hydra composes ``conf/`` on top of ``Config`` (registered as ``tlsweep_schema``, first in
``conf/config.yaml``'s defaults), so a key that is not here (``+tuner.max_trail=3``) or a value of
the wrong type (``tuner.max_trials=abc``) fails while the config is composed, before any folder
is made. The values themselves (ranges, choices, how keys relate) are checked by
``tlsweep.config.validate``. Defaults live in the YAML files, each with its comment; the defaults
here only stand in for keys a group option leaves out (a tuner's settings that only another
tuner uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# OmegaConf reads these annotations at run time: Optional[...] and List-free Any are what it understands.
# ruff: noqa: UP007, UP045


@dataclass
class BackboneConfig:
    name: str = MISSING
    factory: Optional[str] = None
    handle: Optional[str] = None
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
    max_trials: int = 10
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
class FeatureCacheConfig:
    views: Optional[int] = None
    dtype: str = "float32"
    memory_mb: float = 2048.0
    dir: str = "outputs/.cache"


@dataclass
class DistributedConfig:
    role: Optional[str] = None
    chief: str = "localhost:8000"


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
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


SCHEMA_NAME = "tlsweep_schema"


def register_schema() -> None:
    """Make ``Config`` available to ``conf/config.yaml``'s defaults list; call before Hydra composes."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)
