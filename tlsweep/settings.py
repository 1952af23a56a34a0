"""The config's schema and its rules: every key tlsweep reads, its type, and what values it takes.

Hydra composes ``conf/`` on top of ``Config`` (registered as ``tlsweep_schema``, first in
``conf/config.yaml``'s defaults), so a key that is not here (``+tuner.max_trail=3``) or a value of
the wrong type (``tuner.max_trials=abc``) fails while the config is composed, before any folder
is made. ``validate`` checks the values themselves (ranges, choices, how keys relate): the one place
for every rule. ``TrialSettings`` is the typed view a trial reads. Defaults live in the YAML files,
each with its comment; the defaults here only stand in for keys a group option leaves out (a
tuner's settings that only another tuner uses).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from tlsweep.errors import TlsweepError

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
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


SCHEMA_NAME = "tlsweep_schema"


def register_schema() -> None:
    """Make ``Config`` available to ``conf/config.yaml``'s defaults list; call before Hydra composes."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
SAMPLINGS = ("log", "linear")
OBJECTIVES = ("val_accuracy", "val_loss", "val_balanced_accuracy", "val_macro_f1", "accuracy", "loss")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZE = ("none", "float16", "int8")
DATASETS = ("digits", "folder", "tf_flowers")
PREPROCESSING_MODES = ("tf", "torch", "unit", "none", "preset")  # tlsweep.backbones.PREPROCESSING says what each does
POOLING_MODES = ("cls", "mean")  # a transformer's tokens to one vector: the class token, or the patch tokens' mean
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
DISTRIBUTED_ROLES = ("chief", "worker")
PRUNING_RULES = ("none", "median", "asha")


def minimised(objective: str) -> bool:
    """Whether a tuner objective is minimised: losses are, everything else is maximised."""
    return objective.endswith("loss")


@dataclass(frozen=True)
class Objective:
    """The metric a search optimises, and which way."""

    name: str

    @property
    def minimise(self) -> bool:
        return minimised(self.name)

    def better(self, value: float, than: float) -> bool:
        return value < than if self.minimise else value > than


def finetune_epochs(finetune: Any) -> int:
    """Stage 2's epochs: none with ``finetune=none``, whatever ``finetune_epochs`` says."""
    return int(finetune.finetune_epochs) if finetune.mode != "none" else 0


@dataclass(frozen=True)
class SearchSpace:
    """What KerasTuner chooses from for each trial."""

    lr_min: float
    lr_max: float
    lr_sampling: str
    lr_step: float | None  # grid search: the factor between learning rates
    optimizers: tuple[str, ...]
    depths: tuple[int, ...]  # with finetune=top


@dataclass(frozen=True)
class TrialSettings:
    """What a trial reads of the config, typed, once the config is valid."""

    objective: Objective
    mode: str  # none | top | full
    head_epochs: int
    finetune_epochs: int  # 0 with finetune=none
    lr_scale: float
    patience: int | None  # a stage stops after this many epochs without a better objective
    space: SearchSpace
    optimizers: dict[str, Any]  # each optimizer's settings, for hydra.utils.instantiate
    keep_checkpoints: bool  # Hyperband continues trials from their checkpoints; no other tuner reads one

    @classmethod
    def from_config(cls, config: DictConfig) -> TrialSettings:
        ft, search = config.finetune, config.search
        lr = search.learning_rate
        step = config.tuner.get("learning_rate_step")
        return cls(
            objective=Objective(str(config.tuner.objective)),
            mode=str(ft.mode),
            head_epochs=int(ft.head_epochs),
            finetune_epochs=finetune_epochs(ft),
            lr_scale=float(ft.lr_scale),
            patience=None if ft.patience is None else int(ft.patience),
            space=SearchSpace(
                float(lr.min),
                float(lr.max),
                str(lr.sampling),
                None if step is None else float(step),
                tuple(str(o) for o in search.optimizers),
                tuple(int(d) for d in search.unfreeze_depths) if ft.mode == "top" else (),
            ),
            optimizers=OmegaConf.to_container(config.optimizer, resolve=True),  # type: ignore[arg-type]
            keep_checkpoints=config.tuner.name == "hyperband",
        )


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
    for key, value in cfg.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append(path)
            continue
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            found += unknown_keys(value, f"{path}.")
    return found


def validate(cfg: DictConfig) -> None:
    """Raise TlsweepError naming the first invalid setting and how to fix it: every rule on the config's
    values is here, checked before any job starts (``tlsweep.config.check_command_line``)."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise TlsweepError(unknown_key_message(unknown[0]))
    checks = (_required, _dataset, _backbone, _augmentation, _search, _finetune, _tuner, _pruning, _feature_cache, _run)
    for check in checks:
        problem = check(cfg)
        if problem:
            raise TlsweepError(problem)


def _required(cfg: DictConfig) -> str | None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if cfg.dataset.name == "folder" and not cfg.dataset.path:
        missing.insert(0, "dataset.path")
    if not cfg.backbone.factory and not cfg.backbone.handle and not cfg.backbone.preset:
        missing.insert(0, "backbone.preset" if cfg.backbone.weights == "preset" else "backbone.handle")
    hints = {
        "dataset.path": " (e.g. dataset.path=path/to/images)",
        "backbone.handle": " (a tfhub.dev or Kaggle Models URL, or a SavedModel folder)",
        "backbone.preset": " (a KerasHub preset name such as dinov2_small, a kaggle:// handle, or a preset folder)",
    }
    return f"{missing[0]} must be set{hints.get(missing[0], '')}" if missing else None


def _dataset(cfg: DictConfig) -> str | None:
    ds = cfg.dataset
    if not 0.0 < ds.fraction <= 1.0:
        return f"dataset.fraction={ds.fraction} must be in (0, 1], e.g. dataset.fraction=0.25"
    if not 0.0 < ds.validation_split < 1.0:
        return f"dataset.validation_split={ds.validation_split} must be between 0 and 1, e.g. 0.2"
    if not 0.0 <= ds.test_split < 1.0:
        return f"dataset.test_split={ds.test_split} must be in [0, 1), e.g. 0.2 (0: no test set)"
    if ds.batch_size < 1:
        return f"dataset.batch_size={ds.batch_size} must be at least 1"
    if ds.name not in DATASETS:
        return f"unknown dataset '{ds.name}'; use one of: {', '.join(DATASETS)}"
    return None


def _backbone(cfg: DictConfig) -> str | None:
    mode = cfg.backbone.preprocessing
    if mode not in PREPROCESSING_MODES:
        return f"unknown backbone.preprocessing '{mode}'; use one of: {', '.join(PREPROCESSING_MODES)}"
    if cfg.backbone.pooling not in POOLING_MODES:
        return f"unknown backbone.pooling '{cfg.backbone.pooling}'; use one of: {', '.join(POOLING_MODES)}"
    sources = [key for key in ("factory", "handle", "preset") if cfg.backbone.get(key)]
    if len(sources) > 1:
        return (
            f"backbone {cfg.backbone.name} sets both backbone.{sources[0]} and backbone.{sources[1]}; a backbone "
            "is one of them: pick another backbone=… config instead of overriding"
        )
    if mode == "preset" and not cfg.backbone.preset:
        return "backbone.preprocessing=preset takes the preset's image converter: it needs a backbone.preset"
    return None


def _augmentation(cfg: DictConfig) -> str | None:
    flip = cfg.augmentation.flip
    if flip and flip not in FLIP_MODES:
        return f"augmentation.flip={flip} is not one of {', '.join(FLIP_MODES)} or null"
    return None


def _search(cfg: DictConfig) -> str | None:
    lr = cfg.search.learning_rate
    if lr.min <= 0 or lr.max <= 0:
        return f"search.learning_rate.min={lr.min} and max={lr.max} must be positive numbers, e.g. min=1e-4 max=1e-2"
    if lr.min > lr.max:
        return f"search.learning_rate.min={lr.min} is larger than max={lr.max}; swap them"
    if lr.sampling not in SAMPLINGS:
        return f"search.learning_rate.sampling={lr.sampling} must be one of: {', '.join(SAMPLINGS)}"
    loaded = list(cfg.optimizer.keys())
    optimizers = list(cfg.search.optimizers)
    if not optimizers:
        return f"search.optimizers is empty; choose from {loaded}"
    unloaded = next((name for name in optimizers if name not in loaded), None)
    if unloaded:
        return (
            f"search.optimizers names '{unloaded}', which is not loaded; "
            f"load it with optimizer=[{','.join([*loaded, unloaded])}] (loaded: {', '.join(loaded)})"
        )
    depths = list(cfg.search.unfreeze_depths)
    if cfg.finetune.mode == "top" and (not depths or any(d < 0 for d in depths)):
        return f"search.unfreeze_depths={depths} must be a non-empty list of whole numbers ≥ 0, e.g. [0,5,10]"
    return None


def _finetune(cfg: DictConfig) -> str | None:
    ft = cfg.finetune
    if ft.mode not in FINETUNE_MODES:
        return f"finetune.mode={ft.mode} must be one of: {', '.join(FINETUNE_MODES)}"
    if ft.head_epochs < 1:
        return f"finetune.head_epochs={ft.head_epochs} must be at least 1"
    if ft.mode != "none" and ft.finetune_epochs < 1:
        return (
            f"finetune.finetune_epochs={ft.finetune_epochs} must be at least 1 with finetune={ft.mode}; "
            "use finetune=none for feature extraction only"
        )
    if not 0.0 <= ft.dropout < 1.0:
        return f"finetune.dropout={ft.dropout} must be in [0, 1)"
    if ft.lr_scale <= 0:
        return f"finetune.lr_scale={ft.lr_scale} must be positive, e.g. 0.1"
    if ft.patience is not None and ft.patience < 1:
        return f"finetune.patience={ft.patience} must be at least 1 (epochs), or null to train every epoch"
    return None


def _pruning(cfg: DictConfig) -> str | None:
    pruning = cfg.pruning
    if pruning.rule not in PRUNING_RULES:
        return f"pruning.rule={pruning.rule} must be one of: {', '.join(PRUNING_RULES)} (e.g. pruning=median)"
    if pruning.rule == "none":
        return None
    if cfg.tuner.name == "hyperband":
        return f"pruning={pruning.rule} with tuner=hyperband: Hyperband stops trials early itself; use pruning=none"
    if pruning.warmup_epochs < 1 or pruning.min_trials < 1:
        return (
            f"pruning.warmup_epochs={pruning.warmup_epochs} and pruning.min_trials={pruning.min_trials} "
            "must be at least 1"
        )
    if pruning.rule == "asha" and pruning.reduction_factor < 2:
        return f"pruning.reduction_factor={pruning.reduction_factor} must be at least 2, e.g. 3"
    return None


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def budget_seconds(budget: Any) -> float | None:
    """``budget``'s seconds: a number of seconds, or a duration such as ``90s``, ``30m``, ``2h`` or ``1h30m``;
    None for no budget. Raises ValueError for anything else."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        text = str(budget).strip().lower().replace(" ", "")
        match = DURATION.fullmatch(text)
        if not text or not match or not any(match.groups()):
            raise ValueError(budget)
        hours, minutes, secs = (float(g or 0) for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(budget)
    return seconds


def _tuner(cfg: DictConfig) -> str | None:
    tuner = cfg.tuner
    if tuner.name not in TUNER_NAMES:
        return f"tuner.name={tuner.name} must be one of: {', '.join(TUNER_NAMES)}"
    if tuner.objective not in OBJECTIVES:
        return f"tuner.objective={tuner.objective} must be one of: {', '.join(OBJECTIVES)}"
    if tuner.name != "hyperband" and tuner.max_trials < 1:
        return f"tuner.max_trials={tuner.max_trials} must be at least 1"
    if tuner.max_consecutive_failed_trials < 1:
        return f"tuner.max_consecutive_failed_trials={tuner.max_consecutive_failed_trials} must be at least 1"
    finalists = cfg.finalists
    if finalists.top < 0 or finalists.seeds < 1 or finalists.replicate < 0:
        return (
            f"finalists.top={finalists.top}, seeds={finalists.seeds} and replicate={finalists.replicate} must be "
            "whole numbers: top ≥ 0 (0: no finalists), seeds ≥ 1 (the search's own included), replicate ≥ 0"
        )
    return None


def _feature_cache(cfg: DictConfig) -> str | None:
    fc = cfg.feature_cache
    if fc.dtype not in CACHE_DTYPES:
        return f"feature_cache.dtype={fc.dtype} must be one of: {', '.join(CACHE_DTYPES)}"
    if fc.views is not None and fc.views < 1:
        return (
            f"feature_cache.views={fc.views} must be at least 1, or null for one per {EPOCHS_PER_VIEW} epochs of the "
            "longer stage"
        )
    if fc.memory_gb is not None and fc.memory_gb <= 0:
        return f"feature_cache.memory_gb={fc.memory_gb} must be positive, e.g. 4, or null for half the free memory"
    if fc.max_disk_gb <= 0:
        return f"feature_cache.max_disk_gb={fc.max_disk_gb} must be positive, e.g. 50"
    return None


def _run(cfg: DictConfig) -> str | None:
    if cfg.seed < 0:
        return f"seed={cfg.seed} must be a whole number ≥ 0"
    try:
        budget = budget_seconds(cfg.budget)
    except ValueError:
        return f"budget={cfg.budget} is not a duration; use e.g. budget=90s, budget=30m, budget=2h or budget=1h30m"
    weights = cfg.class_weight
    if isinstance(weights, DictConfig):
        bad = next((k for k, v in weights.items() if not isinstance(v, (int, float)) or v <= 0), None)
        if bad is not None:
            return f"class_weight.{bad}={weights[bad]} must be a positive number, e.g. class_weight={{{bad}: 2.0}}"
    elif weights is not None and weights != "balanced":
        return f"class_weight={weights} must be balanced, a mapping such as {{cat: 2.0}}, or null"
    if budget is not None and cfg.distributed.role:
        return (
            f"budget={cfg.budget} cannot be used with distributed.role={cfg.distributed.role}: the chief would wait "
            "for trials its workers no longer start; bound a distributed search with tuner.max_trials instead"
        )
    if cfg.precision not in PRECISIONS:
        return f"precision={cfg.precision} must be one of: {', '.join(PRECISIONS)}"
    if cfg.threads is not None and cfg.threads < 1:
        return f"threads={cfg.threads} must be a whole number ≥ 1, or null for all cores"
    if cfg.export.quantize not in QUANTIZE:
        return f"export.quantize={cfg.export.quantize} must be one of: {', '.join(QUANTIZE)}"
    role, chief = cfg.distributed.role, str(cfg.distributed.chief)
    if role is not None and role not in DISTRIBUTED_ROLES:
        return f"distributed.role={role} must be chief, worker or null"
    host, _, port = chief.rpartition(":")
    if role and (not host or not port.isdigit()):
        return f"distributed.chief={chief} must be host:port, e.g. node1:8000"
    return None


CACHE_DTYPES = ("float32", "float16")
EPOCHS_PER_VIEW = 3  # by default an augmented view serves up to this many epochs of a stage (README: measured)


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
