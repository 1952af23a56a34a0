"""Each config group, typed and frozen, with the checks on its own values.

``tlsweep.spec.JobSpec`` holds one of each and adds the rules that relate several groups. Every
rule on a group's values is its ``problem()``: one line naming the setting and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from tlsweep.objective import OBJECTIVE_NAMES as OBJECTIVES
from tlsweep.objective import Objective
from tlsweep.race import trials_in_round

FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
SAMPLINGS = ("log", "linear")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZE = ("none", "float16", "int8")
DATASETS = ("digits", "folder", "tf_flowers")
PREPROCESSING_MODES = ("tf", "torch", "unit", "none", "preset")  # tlsweep.backbones.PREPROCESSING says what each does
POOLING_MODES = ("cls", "mean")  # a transformer's tokens to one vector: the class token, or the patch tokens' mean
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
DISTRIBUTED_ROLES = ("chief", "worker")
PRUNING_RULES = ("none", "median", "asha")
CACHE_DTYPES = ("float32", "float16")
EPOCHS_PER_VIEW = 3  # by default an augmented view serves up to this many epochs of a stage (README: measured)
MAX_SEED = 2**32 - 1  # NumPy and TensorFlow take seeds below 2**32

StagePlan = list[tuple[str, int, int]]  # (stage, first epoch, end epoch) of each fit, on one epoch axis


def part(cls: type, data: Any) -> Any:
    """A spec part from its config group: the fields it declares, lists as tuples (the spec is frozen)."""
    data = data if isinstance(data, dict) else {}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str | None = None
    validation_split: float = 0.2
    test_split: float = 0.0
    test: str | None = None
    fraction: float = 1.0
    batch_size: int = 32
    image_size: int | None = None
    seed: int = 0
    workers: int = 4
    data_dir: str | None = None

    def problem(self) -> str | None:
        if self.name not in DATASETS:
            return f"unknown dataset '{self.name}'; use one of: {', '.join(DATASETS)}"
        if self.name == "folder" and not self.path:
            return "dataset.path must be set (e.g. dataset.path=path/to/images)"
        if not 0.0 < self.fraction <= 1.0:
            return f"dataset.fraction={self.fraction} must be in (0, 1], e.g. dataset.fraction=0.25"
        if not 0.0 < self.validation_split < 1.0:
            return f"dataset.validation_split={self.validation_split} must be between 0 and 1, e.g. 0.2"
        if not 0.0 <= self.test_split < 1.0:
            return f"dataset.test_split={self.test_split} must be in [0, 1), e.g. 0.2 (0: no test set)"
        if self.batch_size < 1:
            return f"dataset.batch_size={self.batch_size} must be at least 1"
        if self.image_size is not None and self.image_size < 1:
            return f"dataset.image_size={self.image_size} must be a positive number of pixels, or null"
        return None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    image_size: int
    preprocessing: str
    factory: str | None = None
    handle: str | None = None
    preset: str | None = None
    pooling: str = "cls"
    weights: str | None = None
    unfreeze_depths: tuple[int, ...] = ()

    def problem(self) -> str | None:
        if not self.factory and not self.handle and not self.preset:
            if self.weights == "preset":
                return (
                    "backbone.preset must be set (a KerasHub preset name such as dinov2_small, a kaggle:// handle, "
                    "or a preset folder)"
                )
            return "backbone.handle must be set (a tfhub.dev or Kaggle Models URL, or a SavedModel folder)"
        if self.preprocessing not in PREPROCESSING_MODES:
            modes = ", ".join(PREPROCESSING_MODES)
            return f"unknown backbone.preprocessing '{self.preprocessing}'; use one of: {modes}"
        if self.pooling not in POOLING_MODES:
            return f"unknown backbone.pooling '{self.pooling}'; use one of: {', '.join(POOLING_MODES)}"
        sources = [key for key in ("factory", "handle", "preset") if getattr(self, key)]
        if len(sources) > 1:
            return (
                f"backbone {self.name} sets both backbone.{sources[0]} and backbone.{sources[1]}; a backbone "
                "is one of them: pick another backbone=… config instead of overriding"
            )
        if self.preprocessing == "preset" and not self.preset:
            return "backbone.preprocessing=preset takes the preset's image converter: it needs a backbone.preset"
        return None


@dataclass(frozen=True)
class AugmentationSpec:
    flip: str | None = None
    rotation: float = 0.0
    zoom: float = 0.0
    height: float = 0.0
    width: float = 0.0

    @property
    def changes_images(self) -> bool:
        """Whether this augmentation changes the images at all."""
        return bool(self.flip or self.rotation or self.zoom or self.height or self.width)

    def problem(self) -> str | None:
        if self.flip and self.flip not in FLIP_MODES:
            return f"augmentation.flip={self.flip} is not one of {', '.join(FLIP_MODES)} or null"
        return None


@dataclass(frozen=True)
class TrainingSpec:
    """The two stages of every run: a head on the frozen backbone, then its top unfrozen (``mode``)."""

    mode: str  # none | top | full
    head_epochs: int
    finetune_epochs: int = 0  # read through ``stage2_epochs``: none without stage 2
    lr_scale: float = 0.1
    dropout: float = 0.2
    patience: int | None = None

    @property
    def stage2_epochs(self) -> int:
        """Stage 2's epochs: none with ``finetune=none``, whatever ``finetune_epochs`` says."""
        return self.finetune_epochs if self.mode != "none" else 0

    @property
    def total_epochs(self) -> int:
        return self.head_epochs + self.stage2_epochs

    def plan(self, epochs: int | None = None, initial_epoch: int = 0) -> StagePlan:
        """Each ``fit`` of a run on one epoch axis. ``epochs`` is a budget a tuner sets (Hyperband),
        split between the stages in the ratio ``head_epochs : finetune_epochs``."""
        head, finetune = self.head_epochs, self.stage2_epochs
        total = head + finetune if epochs is None else epochs
        boundary = head
        if epochs is not None and finetune:
            boundary = max(1, round(total * head / (head + finetune)))
        plan = []
        if initial_epoch < min(boundary, total):
            plan.append(("head", initial_epoch, min(boundary, total)))
        if finetune and total > max(boundary, initial_epoch):
            plan.append(("finetune", max(boundary, initial_epoch), total))
        return plan

    def refit_plan(self, epochs: int) -> StagePlan:
        """A refit's fits: exactly ``epochs`` epochs, the stages split as the full schedule splits them."""
        plan = [("head", 0, min(epochs, self.head_epochs))]
        if epochs > self.head_epochs and self.stage2_epochs:
            plan.append(("finetune", self.head_epochs, epochs))
        return plan

    def problem(self) -> str | None:
        if self.mode not in FINETUNE_MODES:
            return f"finetune.mode={self.mode} must be one of: {', '.join(FINETUNE_MODES)}"
        if self.head_epochs < 1:
            return f"finetune.head_epochs={self.head_epochs} must be at least 1"
        if self.mode != "none" and self.finetune_epochs < 1:
            return (
                f"finetune.finetune_epochs={self.finetune_epochs} must be at least 1 with finetune={self.mode}; "
                "use finetune=none for feature extraction only"
            )
        if not 0.0 <= self.dropout < 1.0:
            return f"finetune.dropout={self.dropout} must be in [0, 1)"
        if self.lr_scale <= 0:
            return f"finetune.lr_scale={self.lr_scale} must be positive, e.g. 0.1"
        if self.patience is not None and self.patience < 1:
            return f"finetune.patience={self.patience} must be at least 1 (epochs), or null to train every epoch"
        return None


@dataclass(frozen=True)
class SearchSpace:
    """What KerasTuner chooses from for each trial."""

    lr_min: float
    lr_max: float
    lr_sampling: str
    lr_step: float | None  # grid search: the factor between learning rates
    optimizers: tuple[str, ...]
    depths: tuple[int, ...]  # unfreeze depths with finetune=top; empty otherwise


def hyperband_schedule(max_epochs: int, factor: int, iterations: int) -> list[tuple[int, int]]:
    """(epochs, initial_epoch) of each trial KerasTuner's Hyperband runs, in the order it runs them.

    KerasTuner keeps this arithmetic inside its ``HyperbandOracle`` (``_get_num_brackets``,
    ``_get_size``, ``_get_epochs``); tlsweep needs it before a tuner exists, to plan the cache and
    the budget. ``tests/test_spec.py`` checks it against the oracle, so a change there fails loudly.
    Random draws that collide can end a search sooner; this is the most it runs.
    """
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))

    def size(bracket: int, rung: int) -> int:
        return math.ceil(end_size / (bracket + 1) * factor ** (bracket - rung))

    def budget(bracket: int, rung: int) -> int:
        return math.ceil(max_epochs / factor ** (bracket - rung))

    runs = []
    for _ in range(iterations):
        for bracket in reversed(range(brackets)):
            for rung in range(bracket + 1):
                runs += [(budget(bracket, rung), budget(bracket, rung - 1) if rung else 0)] * size(bracket, rung)
    return runs


@dataclass(frozen=True)
class TunerSpec:
    name: str
    objective: Objective
    max_trials: int | None  # Hyperband: a cap on the trials its schedule runs (None: the whole schedule)
    max_consecutive_failed_trials: int = 3
    num_initial_points: int = 3
    learning_rate_step: float | None = None
    factor: int = 3
    hyperband_iterations: int = 1

    @property
    def sizes_itself(self) -> bool:
        """Whether the tuner sets each trial's epoch budget (Hyperband), not tlsweep's schedule."""
        return self.name == "hyperband"

    def schedule(self, total_epochs: int) -> list[tuple[int | None, int]]:
        """(epoch budget, initial epoch) of each trial the search runs at most; None: the full schedule."""
        if not self.sizes_itself:
            return [(None, 0)] * int(self.max_trials or 0)
        runs = hyperband_schedule(total_epochs, self.factor, self.hyperband_iterations)
        return runs[: self.max_trials] if self.max_trials else runs  # type: ignore[return-value]

    def problem(self) -> str | None:
        if self.name not in TUNER_NAMES:
            return f"tuner.name={self.name} must be one of: {', '.join(TUNER_NAMES)}"
        if self.objective.name not in OBJECTIVES:
            return f"tuner.objective={self.objective.name} must be one of: {', '.join(OBJECTIVES)}"
        if not self.sizes_itself and self.max_trials is None:
            return f"tuner.max_trials must be set with tuner={self.name}, e.g. tuner.max_trials=10"
        if self.max_trials is not None and self.max_trials < 1:
            return f"tuner.max_trials={self.max_trials} must be at least 1"
        if self.max_consecutive_failed_trials < 1:
            return f"tuner.max_consecutive_failed_trials={self.max_consecutive_failed_trials} must be at least 1"
        if self.factor < 2 or self.hyperband_iterations < 1:
            return f"tuner.factor={self.factor} must be at least 2 and hyperband_iterations at least 1"
        return None


@dataclass(frozen=True)
class PruningSpec:
    rule: str = "none"
    warmup_epochs: int = 1
    min_trials: int = 3
    reduction_factor: int = 3

    def problem(self) -> str | None:
        if self.rule not in PRUNING_RULES:
            return f"pruning.rule={self.rule} must be one of: {', '.join(PRUNING_RULES)} (e.g. pruning=median)"
        if self.rule != "none" and (self.warmup_epochs < 1 or self.min_trials < 1):
            return (
                f"pruning.warmup_epochs={self.warmup_epochs} and pruning.min_trials={self.min_trials} "
                "must be at least 1"
            )
        if self.rule == "asha" and self.reduction_factor < 2:
            return f"pruning.reduction_factor={self.reduction_factor} must be at least 2, e.g. 3"
        return None


@dataclass(frozen=True)
class FinalistsSpec:
    top: int = 3
    seeds: int = 3
    replicate: int = 0
    refit: bool = False

    @property
    def enabled(self) -> bool:
        """Whether finalists run: at least one configuration, with at least one more seed."""
        return self.top > 0 and self.seeds > 1

    def problem(self) -> str | None:
        if self.top < 0 or self.seeds < 1 or self.replicate < 0:
            return (
                f"finalists.top={self.top}, seeds={self.seeds} and replicate={self.replicate} must be whole "
                "numbers: top ≥ 0 (0: no finalists), seeds ≥ 1 (the search's own included), replicate ≥ 0"
            )
        return None


@dataclass(frozen=True)
class CacheSpec:
    enabled: bool = True
    views: int | None = None  # as set; ``JobSpec.views`` applies the rule
    dtype: str = "float32"
    memory_gb: float | None = None
    max_disk_gb: float = 50.0
    dir: str = "outputs/.cache"

    def problem(self) -> str | None:
        if self.dtype not in CACHE_DTYPES:
            return f"feature_cache.dtype={self.dtype} must be one of: {', '.join(CACHE_DTYPES)}"
        if self.views is not None and self.views < 1:
            return (
                f"feature_cache.views={self.views} must be at least 1, or null for one per {EPOCHS_PER_VIEW} epochs "
                "of the longer stage"
            )
        if self.memory_gb is not None and self.memory_gb <= 0:
            return f"feature_cache.memory_gb={self.memory_gb} must be positive, e.g. 4, or null: half the free memory"
        if self.max_disk_gb <= 0:
            return f"feature_cache.max_disk_gb={self.max_disk_gb} must be positive, e.g. 50"
        return None


@dataclass(frozen=True)
class DeviceSpec:
    precision: str = "float32"
    jit_compile: bool = False
    gpu_memory_growth: bool = True
    threads: int | None = None

    def problem(self) -> str | None:
        if self.precision not in PRECISIONS:
            return f"precision={self.precision} must be one of: {', '.join(PRECISIONS)}"
        if self.threads is not None and self.threads < 1:
            return f"threads={self.threads} must be a whole number ≥ 1, or null for all cores"
        return None


@dataclass(frozen=True)
class DistributedSpec:
    role: str | None = None
    chief: str = "localhost:8000"

    def problem(self) -> str | None:
        if self.role is not None and self.role not in DISTRIBUTED_ROLES:
            return f"distributed.role={self.role} must be chief, worker or null"
        host, _, port = self.chief.rpartition(":")
        if self.role and (not host or not port.isdigit()):
            return f"distributed.chief={self.chief} must be host:port, e.g. node1:8000"
        return None


@dataclass(frozen=True)
class ExportSpec:
    enabled: bool = True
    saved_model: bool = True
    tflite: bool = False
    quantize: str = "none"

    def problem(self) -> str | None:
        if self.quantize not in QUANTIZE:
            return f"export.quantize={self.quantize} must be one of: {', '.join(QUANTIZE)}"
        return None


@dataclass(frozen=True)
class RaceSpec:
    """Where a job is in a race (``hydra/sweeper=race``): round 0 is no race."""

    round: int = 0
    rounds: int = 0
    eta: int = 3

    def trials_now(self, total: int) -> int | None:
        """The trials the job may have run by the end of this round (None: all of them, and its finalists)."""
        if self.round == 0 or self.round >= self.rounds:
            return None
        return trials_in_round(total, self.round, self.rounds, self.eta)

    def problem(self) -> str | None:
        if self.round < 0 or self.eta < 2 or (self.round and self.round > self.rounds):
            return f"race.round={self.round}, rounds={self.rounds} and eta={self.eta} are the race sweeper's to set"
        return None


@dataclass(frozen=True)
class ReportSpec:
    enabled: bool = True
    top: int = 5


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
