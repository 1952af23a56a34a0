"""The job spec: the whole config, typed, frozen and checked once, with every rule derived from it.

``JobSpec`` is also the config's schema: ``tlsweep.schema`` registers it for Hydra, so each setting
is declared once, in ``tlsweep.groups`` (the groups) or here (the top-level settings). ``JobSpec.parse``
takes the resolved config and raises TlsweepError naming the first invalid setting and how to fix it.
Below the job, code reads the spec, never the config: the split of epochs between stages
(``TrainingSpec.plan``), the search space (``space``), the unfreeze depths, the augmented views,
Hyperband's schedule and what the job is expected to train are each decided by one function, here or
in ``tlsweep.groups``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from tlsweep.errors import TlsweepError
from tlsweep.groups import (
    EPOCHS_PER_VIEW,
    MAX_SEED,
    PRECISIONS,
    AugmentationSpec,
    BackboneSpec,
    CacheSpec,
    DatasetSpec,
    DistributedSpec,
    ExportSpec,
    FinalistsSpec,
    PruningSpec,
    RaceSpec,
    ReportSpec,
    SearchSpec,
    TrainingSpec,
    TunerSpec,
    build,
)
from tlsweep.objective import Objective
from tlsweep.schedule import budget_seconds
from tlsweep.space import Knob, flatten, parse_knob

# Settings that shape the feature cache or the data: a job's, swept across jobs, never searched inside one.
JOB_LEVEL = ("backbone", "dataset", "augmentation", "feature_cache", "cache", "finetune.mode")
SCHEDULE = ("finetune.head_epochs", "finetune.finetune_epochs")  # every trial of a job has the job's schedule
# search.params.<key>=direct: <key> was set directly (finetune.optimizer=sgd), so it is not searched
SET_DIRECTLY = "direct"
# Earlier spellings, and the one that replaced each: refused in one line that gives it.
MOVED = {
    "dataset.batch_size": "finetune.batch_size",
    "search.optimizers": "search.params.finetune.optimizer='choice(adam, sgd)' (or finetune.optimizer=sgd)",
    "search.unfreeze_depths": "search.params.finetune.unfreeze_depth='choice(0, 10, 20)'",
    "search.learning_rate": "search.params.finetune.learning_rate='tag(log, interval(1e-4, 1e-2))'",
    "tuner.learning_rate_step": "tuner.log_step",
}


@dataclass(frozen=True)
class Workload:
    """What a job is expected to train, from its spec alone: the cache's plan and the budget's shares use it."""

    search_runs: float  # the search's trials, counted in runs of the full schedule
    later_runs: int  # finalists' runs and the refit, each a run of the full schedule
    head_epochs: float  # stage-1 epochs over the whole job
    finetune_epochs: float  # stage-2 epochs over the whole job
    head_read: frozenset[int]  # the epochs stage 1 may train: which augmented views it reads
    finetune_read: frozenset[int]

    @property
    def search_share(self) -> float:
        """The share of the job's time its search gets, if every run of the full schedule took as long."""
        total = self.search_runs + self.later_runs
        return self.search_runs / total if total else 1.0


@dataclass(frozen=True)
class JobSpec:
    """Everything a job reads of its config: one field per config group or top-level setting."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)  # the labelled images (dataset=digits|folder|…)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)  # the pretrained network (backbone=tiny|…)
    augmentation: AugmentationSpec = field(default_factory=AugmentationSpec)  # random changes to training images
    optimizer: dict[str, Any] = field(default_factory=dict)  # the loaded optimizers, each with its settings
    finetune: TrainingSpec = field(default_factory=TrainingSpec)  # both stages of every trial
    search: SearchSpec = field(default_factory=SearchSpec)  # what KerasTuner searches in each job
    tuner: TunerSpec = field(default_factory=TunerSpec)  # which KerasTuner tuner, and for how many trials
    pruning: PruningSpec = field(default_factory=PruningSpec)  # how hopeless trials stop early
    finalists: FinalistsSpec = field(default_factory=FinalistsSpec)  # the best configurations over more seeds
    class_weight: Any = None  # balanced: each class weighs 1 / its share of the training images; or {cat: 2.0}
    budget: Any = None  # the job's time, e.g. 90s, 30m or 2h: no trial starts after it, a running one stops
    seed: int = 0  # seeds splits, shuffles, augmentation, weight init and the tuner
    verbose: bool = True  # one progress line per epoch (trial lines are always shown)
    cache: bool = True  # compute the frozen backbone once per job, not per trial and epoch; false: the plain way
    feature_cache: CacheSpec = field(default_factory=CacheSpec)  # where and how the frozen part is kept
    precision: str = "float32"  # float32 | mixed_float16 (GPUs with tensor cores) | mixed_bfloat16
    jit_compile: bool = False  # compile training steps with XLA: often faster on GPUs, slower to start
    gpu_memory_growth: bool = True  # take GPU memory as needed, not all at once (jobs can then share a GPU)
    threads: int | None = None  # TensorFlow CPU threads per job (null: all cores); with parallel jobs: cores / jobs
    resume: Any = False  # true: continue the newest unfinished run/sweep; or its folder
    allow_data_change: bool = False  # with resume: continue although the data changed (earlier trials set aside)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)  # one search shared by several processes
    race: RaceSpec = field(default_factory=RaceSpec)  # set by hydra/sweeper=race for each round; not by hand
    report: ReportSpec = field(default_factory=ReportSpec)  # report.html, report.md and trials.csv at the end
    export: ExportSpec = field(default_factory=ExportSpec)  # the winner's model, tested once, in <folder>/best

    @property
    def image_size(self) -> int | None:
        """The side of the images a job's backbone reads (None for a task without images)."""
        size = self.dataset.image_size or self.backbone.image_size
        return int(size) if size and self.dataset.task == "images" else None

    @property
    def objective(self) -> Objective:
        return Objective(self.tuner.objective)

    @property
    def budget_s(self) -> float | None:
        """The job's time budget in seconds (checked with the spec)."""
        return budget_seconds(self.budget)

    @functools.cached_property
    def space(self) -> tuple[Knob, ...]:
        """The knobs KerasTuner searches (or pins) in each trial, from ``search.params``. Without stage 2 the
        unfreeze depth is no knob; ``finetune=full`` fixes it at the whole backbone (``trial``). A setting made
        directly (``SET_DIRECTLY``) is no knob either: every trial reads it from the spec."""
        params = flatten(self.search.params).items()
        knobs = [parse_knob(key, value) for key, value in params if value != SET_DIRECTLY]
        return tuple(k for k in knobs if k.key != "finetune.unfreeze_depth" or self.finetune.mode == "top")

    def knob(self, key: str) -> Knob | None:
        return next((k for k in self.space if k.key == key), None)

    def depths(self, num_layers: int) -> tuple[int, ...]:
        """The unfreeze depths stage 2 may train at: the searched ones (or the one set), all ``num_layers``, or
        none."""
        if self.finetune.mode == "full":
            return (num_layers,)
        if self.finetune.mode == "none":
            return ()
        knob = self.knob("finetune.unfreeze_depth")
        if knob is not None:
            return tuple(int(d) for d in knob.every_value() or ())
        return () if self.finetune.unfreeze_depth is None else (self.finetune.unfreeze_depth,)

    def cache_depths(self, num_layers: int) -> list[int]:
        """Every depth a run may train at: stage 1 (0) and stage 2's."""
        return sorted({0, *self.depths(num_layers)})

    @property
    def views(self) -> int:
        """Augmented views of the training set: ``feature_cache.views``, else one per ``EPOCHS_PER_VIEW`` (3)
        epochs of the longer stage (at least two); one without augmentation.

        Each view costs a pass of the augmentation and the backbone over the training images, the
        cache's biggest cost. Reusing augmented images for later epochs costs little accuracy ("data
        echoing", Choi et al., 2019), as the benchmark's trials confirm (docs/performance.md). Two at least, so
        consecutive epochs never read the same images.
        """
        if not self.augmentation.changes_images:
            return 1
        if self.feature_cache.views:
            return self.feature_cache.views
        longer = max(self.finetune.head_epochs, self.finetune.stage2_epochs, 1)
        return min(longer, max(2, math.ceil(longer / EPOCHS_PER_VIEW)))

    @property
    def kept_runs(self) -> int:
        """The most runs whose trained weights the job holds in memory at once (``runs.Runner.kept``): with
        finalists, the search's best run of each top configuration and every later run; else a refit's."""
        later = self.workload().later_runs
        return later + self.finalists.top if self.finalists.enabled else later

    def workload(self) -> Workload:
        """What the job trains: its search (on the tuner's schedule), then its finalists' runs and refit on
        the full one. Hyperband re-runs a finalist's own seed when its search run had a smaller budget."""
        training, finalists = self.finetune, self.finalists
        full = training.plan()
        search = [training.plan(epochs, initial) for epochs, initial in self.tuner.schedule(training.total_epochs)]
        later = finalists.top * (finalists.seeds - 1 + int(self.tuner.sizes_itself)) if finalists.enabled else 0
        later += int(finalists.refit)
        plans = [*search, *[full] * later]

        def epochs(stage: str) -> float:
            return sum(end - first for plan in plans for name, first, end in plan if name == stage)

        def read(stage: str) -> frozenset[int]:
            fits = [fit for plan in [*plans, full] for fit in plan if fit[0] == stage]
            return frozenset(e for _, first, end in fits for e in range(first, end))

        searched = sum(end - first for plan in search for _, first, end in plan) / training.total_epochs
        return Workload(searched, later, epochs("head"), epochs("finetune"), read("head"), read("finetune"))

    def hparams(self) -> dict[str, Any]:
        """The job's fixed settings worth comparing across jobs in TensorBoard's HParams table (a searched knob
        is a hyperparameter of each run instead)."""
        searched = {k.key for k in self.space}
        training = {f"finetune.{name}": getattr(self.finetune, name) for name in TrainingSpec.knobs()}
        return {
            "image_size": self.image_size, "finetune.head_epochs": self.finetune.head_epochs,
            "finetune.finetune_epochs": self.finetune.stage2_epochs, "weights": str(self.backbone.weights),
            "seed": self.seed, **{k: v for k, v in training.items() if k not in searched and v is not None},
        }  # fmt: skip

    def deadline(self, started: float, search_only: bool) -> float | None:
        """When (``time.monotonic()``) the job's time budget ends for its search (``search_only``: the share
        ``Workload.search_share`` gives it), or for the whole job; None without a budget."""
        if self.budget_s is None:
            return None
        return started + self.budget_s * (self.workload().search_share if search_only else 1.0)

    def search_trials(self) -> int:
        """The trials the whole search runs: ``tuner.max_trials``, or the length of Hyperband's schedule."""
        return len(self.tuner.schedule(self.finetune.total_epochs))

    def trials_now(self) -> int | None:
        """The trials the search may run by the end of this job's run: all (None), or fewer in a race's early
        round (``tlsweep.race``), which then runs no finalists."""
        return self.race.trials_now(self.search_trials())

    def check_depths(self, num_layers: int, backbone: str, unit: str = "layers") -> None:
        """Unfreeze depths must fit inside the backbone (``unit``: layers, or blocks)."""
        too_deep = [d for d in self.depths(num_layers) if d > num_layers]
        if too_deep:
            raise TlsweepError(
                f"finetune.unfreeze_depth takes {too_deep[0]}, but backbone {backbone} has only {num_layers} "
                f"{unit}; use depths up to {num_layers} (or finetune=full to unfreeze all)"
            )

    def identity(self) -> dict[str, Any]:
        """The settings that decide a job's results, flattened (``backbone.name``: ``tiny``), the search space
        among them: a resumed job must have the same. More trials, other finalists or another budget may change."""
        config = dataclasses.asdict(self)
        settings = {group: config[group] for group in IDENTITY_GROUPS}
        settings.update({key: config[key] for key in ("seed", "precision", "class_weight", "cache")})
        settings.update({f"feature_cache.{k}": config["feature_cache"][k] for k in ("views", "dtype")})
        settings["finalists.replicate"] = self.finalists.replicate
        flat = _flatten(settings)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items() if k not in NOT_IDENTITY}

    def config(self) -> dict[str, Any]:
        """The spec as the config it was made from (what ``job.json`` records), lists as lists."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def parse(cls, config: dict[str, Any]) -> JobSpec:
        """The spec of a resolved config; TlsweepError naming the first invalid setting."""
        missing = sorted(k for k, v in _flatten(config).items() if v == "???")
        if missing:
            raise TlsweepError(f"{missing[0]} must be set")
        spec = build(cls, config)
        groups = [getattr(spec, f.name) for f in dataclasses.fields(spec)]
        for group in (g for g in groups if dataclasses.is_dataclass(g)):  # each group's own rules, in its order
            problem = group.problem()
            if problem:
                raise TlsweepError(problem)
        problem = spec._problem()
        if problem:
            raise TlsweepError(problem)
        return spec

    def _problem(self) -> str | None:
        """The rules that relate several groups or settings."""
        loaded = list(self.optimizer)
        if self.finetune.optimizer not in loaded and not self.knob("finetune.optimizer"):
            return _unloaded("finetune.optimizer", self.finetune.optimizer, loaded)
        for knob in self.space:
            problem = self._knob_problem(knob, loaded)
            if problem:
                return f"search.params.{knob.key}={knob.expression}: {problem}"
        if self.finetune.mode == "top" and self.finetune.unfreeze_depth is None and not self.depths(0):
            return (
                "finetune.unfreeze_depth must be set with finetune=top (e.g. finetune.unfreeze_depth=10), or "
                "searched: search.params.finetune.unfreeze_depth='choice(0, 10, 20)'"
            )
        if self.pruning.rule != "none" and self.tuner.sizes_itself:
            rule = self.pruning.rule
            return f"pruning={rule} with tuner=hyperband: Hyperband stops trials early itself; use pruning=none"
        if not 0 <= self.seed <= MAX_SEED:
            return f"seed={self.seed} must be a whole number from 0 to {MAX_SEED}"
        if self.precision not in PRECISIONS:
            return f"precision={self.precision} must be one of: {', '.join(PRECISIONS)}"
        if self.threads is not None and self.threads < 1:
            return f"threads={self.threads} must be a whole number ≥ 1, or null for all cores"
        try:
            seconds = self.budget_s
        except ValueError:
            return f"budget={self.budget} is not a duration; use e.g. budget=90s, budget=30m, budget=2h, budget=1h30m"
        if seconds is not None and self.distributed.role:
            return (
                f"budget={self.budget} cannot be used with distributed.role={self.distributed.role}: the chief "
                "would wait for trials its workers no longer start; bound a distributed search with tuner.max_trials"
            )
        return _class_weight_problem(self.class_weight) or self._task_problem()

    def _task_problem(self) -> str | None:
        """Settings that make no sense for the job's task (its dataset's): augmenting texts, an image size for
        texts, a backbone that reads the other kind of input."""
        task, backbone, reads = self.dataset.task, self.backbone, {"images": "image", "text": "text"}
        if backbone.input not in (None, reads.get(task)):
            other = "images" if backbone.input == "image" else "texts"
            use = "an image backbone"
            use = "a text encoder (backbone=tiny_text, hub_nnlm, bert_tiny, …)" if task == "text" else use
            return (f"backbone {backbone.name} reads {other}, and dataset {self.dataset.name} holds "
                    f"{'texts' if task == 'text' else 'images'}: use {use}")  # fmt: skip
        if task == "text" and self.augmentation.changes_images:
            return "augmentation changes images, and a text dataset has none: use augmentation=none with texts"
        if task == "text" and self.dataset.image_size is not None:
            return f"dataset.image_size={self.dataset.image_size} sizes images, and a text dataset has none: remove it"
        if task == "text" and self.export.tflite and self.export.quantize == "int8":
            return ("export.quantize=int8 calibrates a TFLite model on images, and a text model reads strings: use "
                    "export.quantize=float16 (or none) for a text model")  # fmt: skip
        return None

    def _knob_problem(self, knob: Knob, loaded: list[str]) -> str | None:
        """What is wrong with searching ``knob``: a setting that is no trial's, a value of the wrong kind, or a
        value its setting's own rules refuse (``TrainingSpec.knob_problem``)."""
        group, _, name = knob.key.partition(".")
        if knob.key in MOVED:
            return f"{knob.key} is now {MOVED[knob.key].partition('=')[0].removeprefix('search.params.')}"
        if group in JOB_LEVEL or knob.key in JOB_LEVEL:
            return (
                f"{knob.key} shapes the data or the feature cache, so it is the job's, not a trial's: sweep it "
                f"across jobs with -m ({knob.key}=a,b), and race them with hydra/sweeper=race"
            )
        if knob.key in SCHEDULE:
            return (
                "every trial of a job has the job's epoch schedule (pruning compares trials epoch by epoch, and "
                f"Hyperband sets each trial's epochs itself): sweep {knob.key} across jobs with -m"
            )
        if group != "finetune" or name not in TrainingSpec.knobs():
            close = difflib.get_close_matches(name, TrainingSpec.knobs(), n=1)
            hint = f"; did you mean finetune.{close[0]}?" if close else ""
            searchable = ", ".join(f"finetune.{k}" for k in TrainingSpec.knobs())
            return f"not a setting a trial can search{hint} (searchable: {searchable})"
        kind = typing.get_type_hints(TrainingSpec)[name]
        if kind in (int, int | None) and knob.kind == "float" or not all(_fits(v, kind) for v in knob.candidates()):
            shown = {int: "whole numbers", int | None: "whole numbers", float: "numbers", str: "names"}[kind]
            ints = ": use int(interval(a, b)), range(start, stop, step) or choice(…)" if "whole" in shown else ""
            return f"finetune.{name} takes {shown}{ints}"
        if name == "optimizer":
            unloaded = next((v for v in knob.candidates() if v not in loaded), None)
            return _unloaded(knob.key, unloaded, loaded) if unloaded else None
        if knob.continuous and self.tuner.name == "grid" and not knob.log:
            return "tuner=grid needs a finite grid: use choice(…) or range(start, stop, step), or a log interval"
        for value in knob.candidates():
            problem = self.finetune.with_values({knob.key: value}).knob_problem()
            if problem:
                return problem
        return None


IDENTITY_GROUPS = ("dataset", "backbone", "augmentation", "optimizer", "finetune", "tuner", "search")
# Settings that cannot change a run's results, or may change on resume by design (more trials).
NOT_IDENTITY = ("dataset.workers", "tuner.max_trials", "tuner.max_consecutive_failed_trials")


def _fits(value: Any, kind: Any) -> bool:
    """Whether a searched value is of the kind its setting takes."""
    if kind is str:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind is float or float(value).is_integer()


def _unloaded(key: str, name: Any, loaded: list[str]) -> str:
    return (
        f"{key} names '{name}', which is not loaded; load it with optimizer=[{','.join([*loaded, str(name)])}] "
        f"(loaded: {', '.join(loaded)})"
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _class_weight_problem(weights: Any) -> str | None:
    if isinstance(weights, dict):
        bad = next((k for k, v in weights.items() if not _positive(v)), None)
        if bad is not None:
            return f"class_weight.{bad}={weights[bad]} must be a positive number, e.g. class_weight={{{bad}: 2.0}}"
    elif weights is not None and weights != "balanced":
        return f"class_weight={weights} must be balanced, a mapping such as {{cat: 2.0}}, or null"
    return None
