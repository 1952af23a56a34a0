"""Every setting of every config group, declared once: its type, its default, a one-line comment, its checks.

Hydra's schema (``tlsweep.schema``) and the typed, frozen spec a job reads (``tlsweep.spec.JobSpec``)
both come from these dataclasses: ``conf/`` only picks options, each setting only what differs from
the default here. Every rule on a group's values is its ``problem()``: one line naming the setting
and how to fix it. A field made with ``knob`` is a trial-level setting that ``search.params`` may
search (``tlsweep.space``): to add one, declare it here and use it where the trial trains.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from tlsweep.objective import OBJECTIVE_NAMES as OBJECTIVES
from tlsweep.race import trials_in_round
from tlsweep.schedule import StagePlan, hyperband_schedule

FINETUNE_MODES = ("none", "top", "full")
TUNER_NAMES = ("random", "bayesian", "hyperband", "grid")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZE = ("none", "float16", "int8")
DATASETS = {"images": ("digits", "folder", "tf_flowers"), "text": ("text_folder", "text_table", "text_demo")}
PREPROCESSING_MODES = ("tf", "torch", "unit", "none", "preset")  # tlsweep.tasks.images.backbones.PREPROCESSING: each
POOLING_MODES = ("cls", "mean")  # a transformer's tokens to one vector: the class token, or the patch tokens' mean
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
DISTRIBUTED_ROLES = ("chief", "worker")
PRUNING_RULES = ("none", "median", "asha")
CACHE_DTYPES = ("float32", "float16")
EPOCHS_PER_VIEW = 3  # by default an augmented view serves up to this many epochs of a stage (measured: docs/)
MAX_SEED = 2**32 - 1  # NumPy and TensorFlow take seeds below 2**32
MISSING: Any = "???"  # a setting each option of its group must give (OmegaConf's mark for it)


def knob(default: Any) -> Any:
    """A trial-level setting: one value for the job, unless ``search.params`` searches it."""
    return field(default=default, metadata={"knob": True})


def build(cls: type, data: Any) -> Any:
    """The dataclass ``cls`` from a resolved config mapping: nested groups built the same way, lists as tuples
    (a spec is frozen), keys the group does not declare left out (an older record's)."""
    data = data if isinstance(data, dict) else {}
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value, hint = data[f.name], hints[f.name]
            if dataclasses.is_dataclass(hint):
                value = build(hint, value)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class DatasetSpec:
    name: str = MISSING  # digits (the offline demo) | folder (your images) | tf_flowers (TFDS) | text_folder | …
    task: str = "images"  # what it holds, which decides the job's task: images | text (each dataset option sets it)
    path: str | None = None  # the dataset folder: class sub-folders, or train/ and val/ (and test/) holding them
    validation_split: float = 0.2  # fraction of each class held out for validation when there is no val/ folder
    test_split: float = 0.0  # held out from training to test the best model once (0: none, unless a test/ folder)
    test: str | None = None  # a folder of class sub-folders to test the best model on; null: <path>/test/ if it exists
    fraction: float = 1.0  # train on this fraction of the training images (per class): start small
    image_size: int | None = None  # input side in pixels; null uses the backbone's
    seed: int = 0  # seeds the split and the fraction (conf/config.yaml makes it the job's seed)
    workers: int = 4  # threads decoding images
    data_dir: str | None = None  # TFDS: where it keeps its data; null: ~/tensorflow_datasets (or $TFDS_DATA_DIR)
    text_column: str = "text"  # text_table: the column holding each text
    label_column: str = "label"  # text_table: the column holding each text's class

    def problem(self) -> str | None:
        if self.task not in DATASETS:
            return f"dataset.task={self.task} must be one of: {', '.join(DATASETS)}"
        if self.name not in DATASETS[self.task]:
            return f"unknown {self.task} dataset '{self.name}'; use one of: {', '.join(DATASETS[self.task])}"
        own = ("folder", "text_folder", "text_table")  # the datasets that are the user's files
        if self.name in own and not self.path:
            what = "a CSV, TSV or JSONL file" if self.name == "text_table" else "path/to/folder"
            return f"dataset.path must be set (e.g. dataset.path={what})"
        if self.name not in own and (self.path or self.test):
            key = "dataset.path" if self.path else "dataset.test"
            return (
                f"{key} is for your own data (dataset=folder, text_folder or text_table), and dataset {self.name} "
                f"brings its own examples: drop {key}, or use dataset.test_split for a test set"
            )
        if not 0.0 < self.fraction <= 1.0:
            return f"dataset.fraction={self.fraction} must be in (0, 1], e.g. dataset.fraction=0.25"
        if not 0.0 < self.validation_split < 1.0:
            return f"dataset.validation_split={self.validation_split} must be between 0 and 1, e.g. 0.2"
        if not 0.0 <= self.test_split < 1.0:
            return f"dataset.test_split={self.test_split} must be in [0, 1), e.g. 0.2 (0: no test set)"
        if self.image_size is not None and self.image_size < 1:
            return f"dataset.image_size={self.image_size} must be a positive number of pixels, or null"
        return None


@dataclass(frozen=True)
class BackboneSpec:
    name: str = MISSING  # what the job's folder, report and records call it
    input: str | None = "image"  # what it reads: image | text | null (a TF Hub model: known once it is loaded)
    image_size: int | None = None  # images: input side in pixels the backbone was trained at
    preprocessing: str = "none"  # images: pixels 0..255 to its input: tf [-1,1] | torch | unit | none | preset
    sequence_length: int | None = None  # texts: tokens read of each text (a tokenizer's own length when null)
    factory: str | None = None  # a Keras model: callable(include_top, weights, input_shape), e.g. keras.applications.X
    handle: str | None = None  # a TF Hub model: tfhub.dev or Kaggle Models URL, or a SavedModel folder
    preset: str | None = None  # a KerasHub preset: a name, a kaggle:// or hf:// handle, or a preset folder
    pooling: str = "cls"  # a transformer's tokens to one vector: cls (the class token) | mean (the patch tokens' mean)
    weights: str | None = None  # imagenet | bundled | hub | preset | null (random) | path/to/file.weights.h5
    unfreeze_depths: tuple[int, ...] = ()  # the depths (top layers or blocks) the default search tries

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
        if self.input not in ("image", "text", None):
            return f"backbone.input={self.input} must be image, text or null (a TF Hub model: known when loaded)"
        if self.input == "image" and not self.image_size:
            return f"backbone {self.name} reads images: backbone.image_size must be set"
        if self.sequence_length is not None and self.sequence_length < 1:
            return f"backbone.sequence_length={self.sequence_length} must be at least 1 (tokens), or null"
        return None


@dataclass(frozen=True)
class AugmentationSpec:
    flip: str | None = None  # horizontal | vertical | horizontal_and_vertical | null
    rotation: float = 0.0  # random rotation, as a fraction of a full turn (0.2 = up to ±72°)
    zoom: float = 0.0  # random zoom in or out by up to this fraction
    height: float = 0.0  # random stretch of the height by up to this fraction (the image keeps its size)
    width: float = 0.0  # random stretch of the width by up to this fraction (the image keeps its size)

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
    """The two stages of every run (the ``finetune`` group): a head on the frozen backbone, then its top unfrozen.

    The knobs are one trial's settings: ``with_values`` gives a trial's own, as the search chose them."""

    mode: str = "top"  # none (head only) | top (unfreeze the top finetune.unfreeze_depth units) | full (all)
    head_epochs: int = 5  # stage 1: epochs training the head on the frozen backbone
    finetune_epochs: int = 5  # stage 2: epochs after unfreezing, continuing the epoch count
    patience: int | None = None  # end a stage after this many epochs without a better objective; null: never
    learning_rate: float = knob(1e-3)  # stage 1's learning rate (searched by the default search)
    optimizer: str = knob("adam")  # one of the loaded optimizers (the optimizer group; searched by default)
    unfreeze_depth: int | None = knob(None)  # top layers (or blocks) unfrozen in stage 2 (searched by default)
    lr_scale: float = knob(0.1)  # stage 2's learning rate = the trial's learning rate × this
    dropout: float = knob(0.2)  # dropout before the classifier
    label_smoothing: float = knob(0.0)  # the training loss' targets: 1 - this on the class, the rest spread evenly
    weight_decay: float = knob(0.0)  # the optimizer's own (decoupled) weight decay; 0: none
    batch_size: int = knob(32)  # examples per training step

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The trial-level settings ``search.params`` may search."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("knob"))

    def with_values(self, values: dict[str, Any]) -> TrainingSpec:
        """These settings with a trial's values (``{"finetune.dropout": 0.3}``) in place of the job's."""
        return dataclasses.replace(self, **{key.removeprefix("finetune."): v for key, v in values.items()})

    def compiled_with(self) -> tuple[Any, ...]:
        """Every value that goes into a compiled training step (``model.SharedClassifier.trainer``): a step
        compiled for other values would train the trial with them, whatever its record says."""
        return (self.optimizer, self.weight_decay, self.label_smoothing, self.dropout)

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
        if self.patience is not None and self.patience < 1:
            return f"finetune.patience={self.patience} must be at least 1 (epochs), or null to train every epoch"
        return self.knob_problem()

    def knob_problem(self) -> str | None:
        """The rules on the trial-level values (also each value a search may draw: ``tlsweep.space``)."""
        if not self.learning_rate > 0:
            return f"finetune.learning_rate={self.learning_rate} must be positive, e.g. 1e-3"
        if not 0.0 <= self.dropout < 1.0:
            return f"finetune.dropout={self.dropout} must be in [0, 1)"
        if not self.lr_scale > 0:
            return f"finetune.lr_scale={self.lr_scale} must be positive, e.g. 0.1"
        if not 0.0 <= self.label_smoothing < 1.0:
            return f"finetune.label_smoothing={self.label_smoothing} must be in [0, 1), e.g. 0.1"
        if not self.weight_decay >= 0:
            return f"finetune.weight_decay={self.weight_decay} must be 0 or more, e.g. 1e-4"
        if self.batch_size < 1:
            return f"finetune.batch_size={self.batch_size} must be at least 1"
        if self.unfreeze_depth is not None and self.unfreeze_depth < 0:
            return f"finetune.unfreeze_depth={self.unfreeze_depth} must be 0 or more (0: head only)"
        return None


@dataclass(frozen=True)
class SearchSpec:
    """What KerasTuner searches in each job: ``search.params`` maps trial-level settings to Hydra's sweep grammar."""

    params: dict[str, Any] = field(default_factory=dict)  # e.g. {finetune: {dropout: interval(0.1, 0.5)}}

    def problem(self) -> str | None:
        return None  # a knob's rules relate it to other groups' settings: ``JobSpec``


@dataclass(frozen=True)
class TunerSpec:
    name: str = MISSING  # random | bayesian | hyperband | grid
    objective: str = "val_accuracy"  # val_accuracy, val_loss (minimised), val_balanced_accuracy, val_macro_f1, …
    max_trials: int | None = None  # trials per job (Hyperband sizes itself; this caps it)
    max_consecutive_failed_trials: int = 3  # stop the job after this many failed trials in a row
    num_initial_points: int = 3  # bayesian: random trials before the Gaussian process takes over
    log_step: float = 10.0  # grid: the factor between the points of a log interval (min, min×step, … up to max)
    factor: int = 3  # hyperband: keep the best 1/factor of the trials at each round
    hyperband_iterations: int = 1  # hyperband: how many times to run the whole schedule

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
        if self.objective not in OBJECTIVES:
            return f"tuner.objective={self.objective} must be one of: {', '.join(OBJECTIVES)}"
        if not self.sizes_itself and self.max_trials is None:
            return f"tuner.max_trials must be set with tuner={self.name}, e.g. tuner.max_trials=10"
        if self.max_trials is not None and self.max_trials < 1:
            return f"tuner.max_trials={self.max_trials} must be at least 1"
        if self.max_consecutive_failed_trials < 1:
            return f"tuner.max_consecutive_failed_trials={self.max_consecutive_failed_trials} must be at least 1"
        if self.factor < 2 or self.hyperband_iterations < 1:
            return f"tuner.factor={self.factor} must be at least 2 and hyperband_iterations at least 1"
        if not self.log_step > 1:
            return f"tuner.log_step={self.log_step} must be more than 1, e.g. 10"
        return None


@dataclass(frozen=True)
class PruningSpec:
    rule: str = "none"  # none | median | asha: how hopeless trials stop early, on the epoch axis of both stages
    warmup_epochs: int = 1  # median: never prune at or before this epoch; asha: its first rung
    min_trials: int = 3  # no trial is pruned until this many other trials reached its epoch (or rung)
    reduction_factor: int = 3  # asha: rungs at warmup × factor^k, and a trial goes on in the top 1/factor

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
    """After the search: the best configurations again with more seeds, so the winner outlasts noise."""

    top: int = 3  # configurations re-run, of those within noise of the search's best (0: none)
    seeds: int = 3  # runs of each, the search's own included; the winner is the best mean
    replicate: int = 0  # which seed a trial runs (0: the search's); the report's rerun of a finalist sets it
    refit: bool = False  # export the winner retrained on training + validation images for its best epoch count

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
        if self.replicate and self.enabled:  # the finalists' seeds would repeat the search's own
            return (
                f"finalists.replicate={self.replicate} reruns one seed of a configuration, and finalists run "
                "every seed themselves: set finalists.top=0 with it (or finalists.seeds to run more seeds)"
            )
        return None


@dataclass(frozen=True)
class CacheSpec:
    """The ``feature_cache`` group: the frozen part computed once per job (``cache=false``: the plain way)."""

    views: int | None = None  # augmented views of the training set; null: one per 3 epochs of the longer stage, ≥ 2
    dtype: str = "float32"  # float16 halves the memory and disk it takes (results differ only by rounding)
    memory_gb: float | None = None  # the job's memory budget, cache and images included; null: half the free memory
    max_disk_gb: float = 50.0  # size limit of the cache folder: the least recently used keys are removed first
    dir: str = "outputs/.cache"  # shared by jobs and later sweeps (python -m tlsweep.cache list|clear)

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
class DistributedSpec:
    """One KerasTuner search shared by several processes or machines."""

    role: str | None = None  # null: this process runs the whole search | chief: hands out trials | worker: runs them
    chief: str = "localhost:8000"  # the chief's host:port; the chief listens on this port, workers connect to it

    def problem(self) -> str | None:
        if self.role is not None and self.role not in DISTRIBUTED_ROLES:
            return f"distributed.role={self.role} must be chief, worker or null"
        host, _, port = self.chief.rpartition(":")
        if self.role and (not host or not port.isdigit()):
            return f"distributed.chief={self.chief} must be host:port, e.g. node1:8000"
        return None


@dataclass(frozen=True)
class ExportSpec:
    """When a run or sweep ends, its best model goes to <folder>/best/ and is tested once on held-out data."""

    enabled: bool = True  # export (and test) the best model
    saved_model: bool = True  # a TensorFlow SavedModel too, for TF Serving
    tflite: bool = False  # a TFLite model too (model.tflite)
    quantize: str = "none"  # TFLite weights: none, float16, or int8 (calibrated on training images)

    def problem(self) -> str | None:
        if self.quantize not in QUANTIZE:
            return f"export.quantize={self.quantize} must be one of: {', '.join(QUANTIZE)}"
        return None


@dataclass(frozen=True)
class RaceSpec:
    """Where a job is in a race (``hydra/sweeper=race``), set by the race sweeper for each round; round 0: none."""

    round: int = 0  # this round (0: not in a race)
    rounds: int = 0  # the race's rounds: the last runs every trial and the finalists
    eta: int = 3  # each round keeps the best 1/eta of the jobs

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
    enabled: bool = True  # write report.html, report.md and trials.csv when a run or sweep ends
    top: int = 5  # trials whose training curves the report plots

    def problem(self) -> str | None:
        return None if self.top >= 0 else f"report.top={self.top} must be 0 or more"
