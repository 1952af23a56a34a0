"""The job spec: a composed config, typed, frozen and checked once, with every rule derived from it.

``JobSpec.parse`` takes the resolved config (a plain mapping: ``tlsweep.schema.job_spec`` makes
it from Hydra's) and raises TlsweepError naming the first invalid setting and how to fix it. Below
the job, code reads the spec, never the config: the split of epochs between stages
(``TrainingSpec.plan``), the unfreeze depths, the augmented views, Hyperband's schedule and what
the job is expected to train are each decided by one function, here or in ``tlsweep.groups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tlsweep.errors import TlsweepError
from tlsweep.groups import (
    EPOCHS_PER_VIEW,
    MAX_SEED,
    SAMPLINGS,
    AugmentationSpec,
    BackboneSpec,
    CacheSpec,
    DatasetSpec,
    DeviceSpec,
    DistributedSpec,
    ExportSpec,
    FinalistsSpec,
    PruningSpec,
    RaceSpec,
    ReportSpec,
    SearchSpace,
    TrainingSpec,
    TunerSpec,
    budget_seconds,
    part,
)
from tlsweep.objective import Objective


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
    """Everything a job reads of its config (``source``: the resolved config itself, for its record)."""

    dataset: DatasetSpec
    backbone: BackboneSpec
    augmentation: AugmentationSpec
    training: TrainingSpec
    search: SearchSpace
    tuner: TunerSpec
    pruning: PruningSpec
    finalists: FinalistsSpec
    cache: CacheSpec
    device: DeviceSpec
    distributed: DistributedSpec
    export: ExportSpec
    report: ReportSpec
    race: RaceSpec
    optimizers: dict[str, dict[str, Any]] = field(compare=False)  # each optimizer's keyword arguments
    class_weight: str | dict[str, float] | None = field(default=None, compare=False)
    seed: int = 0
    budget_s: float | None = None
    verbose: bool = True
    resume: bool | str = False
    allow_data_change: bool = False
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.dataset.image_size or self.backbone.image_size)

    @property
    def objective(self) -> Objective:
        return self.tuner.objective

    def depths(self, num_layers: int) -> tuple[int, ...]:
        """The unfreeze depths stage 2 may train at: the searched ones, all ``num_layers``, or none."""
        if self.training.mode == "top":
            return self.search.depths
        return (num_layers,) if self.training.mode == "full" else ()

    def cache_depths(self, num_layers: int) -> list[int]:
        """Every depth a run may train at: stage 1 (0) and stage 2's."""
        return sorted({0, *self.depths(num_layers)})

    @property
    def views(self) -> int:
        """Augmented views of the training set: ``feature_cache.views``, else one per ``EPOCHS_PER_VIEW`` (3)
        epochs of the longer stage (at least two); one without augmentation.

        Each view costs a pass of the augmentation and the backbone over the training images, the
        cache's biggest cost. Reusing augmented images for later epochs costs little accuracy ("data
        echoing", Choi et al., 2019), as the benchmark's trials confirm (README). Two at least, so
        consecutive epochs never read the same images.
        """
        if not self.augmentation.changes_images:
            return 1
        if self.cache.views:
            return self.cache.views
        longer = max(self.training.head_epochs, self.training.stage2_epochs, 1)
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
        training, finalists = self.training, self.finalists
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
        """The job's fixed settings worth comparing across jobs in TensorBoard's HParams table."""
        training = self.training
        return {
            "image_size": self.image_size, "batch_size": self.dataset.batch_size, "head_epochs": training.head_epochs,
            "finetune_epochs": training.stage2_epochs, "lr_scale": training.lr_scale, "dropout": training.dropout,
            "weights": str(self.backbone.weights), "seed": self.seed,
        }  # fmt: skip

    def search_trials(self) -> int:
        """The trials the whole search runs: ``tuner.max_trials``, or the length of Hyperband's schedule."""
        return len(self.tuner.schedule(self.training.total_epochs))

    def trials_now(self) -> int | None:
        """The trials the search may run by the end of this job's run: all (None), or fewer in a race's early
        round (``tlsweep.race``), which then runs no finalists."""
        return self.race.trials_now(self.search_trials())

    def check_depths(self, num_layers: int, backbone: str, unit: str = "layers") -> None:
        """Unfreeze depths must fit inside the backbone (``unit``: layers, or blocks)."""
        too_deep = [d for d in self.depths(num_layers) if d > num_layers]
        if too_deep:
            raise TlsweepError(
                f"search.unfreeze_depths has {too_deep[0]}, but backbone {backbone} has only {num_layers} {unit}; "
                f"use depths up to {num_layers} (or finetune=full to unfreeze all)"
            )

    def identity(self) -> dict[str, Any]:
        """The settings that decide a job's results, flattened (``backbone.name``: ``tiny``): a resumed
        job must have the same. More trials, other finalists or another budget may change on resume."""
        source = self.source
        settings = {group: source.get(group) for group in IDENTITY_GROUPS}
        settings.update({key: source.get(key) for key in ("seed", "precision", "class_weight", "cache")})
        cache = source.get("feature_cache") or {}
        settings.update({"feature_cache.views": cache.get("views"), "feature_cache.dtype": cache.get("dtype")})
        settings["finalists.replicate"] = (source.get("finalists") or {}).get("replicate")
        return {k: v for k, v in _flatten(settings).items() if k not in NOT_IDENTITY}

    @classmethod
    def parse(cls, config: dict[str, Any]) -> JobSpec:
        """The spec of a resolved config; TlsweepError naming the first invalid setting."""
        spec = cls._build(config)
        for group in (spec.backbone, spec.dataset, spec.augmentation, spec.training, spec.tuner, spec.pruning,
                      spec.finalists, spec.cache, spec.device, spec.distributed, spec.export, spec.race):  # fmt: skip
            problem = group.problem()
            if problem:
                raise TlsweepError(problem)
        problem = spec._problem()
        if problem:
            raise TlsweepError(problem)
        return spec

    @classmethod
    def _build(cls, config: dict[str, Any]) -> JobSpec:
        missing = sorted(_missing(config))
        if missing:
            raise TlsweepError(f"{missing[0]} must be set")
        tuner, search, ft = config.get("tuner") or {}, config.get("search") or {}, config.get("finetune") or {}
        lr = search.get("learning_rate") or {}
        step = tuner.get("learning_rate_step")
        return cls(
            dataset=part(DatasetSpec, config.get("dataset")),
            backbone=part(BackboneSpec, config.get("backbone")),
            augmentation=part(AugmentationSpec, config.get("augmentation")),
            training=part(TrainingSpec, ft),
            search=SearchSpace(
                float(lr.get("min", 0)),
                float(lr.get("max", 0)),
                str(lr.get("sampling", "log")),
                None if step is None else float(step),
                tuple(str(o) for o in search.get("optimizers") or ()),
                tuple(int(d) for d in search.get("unfreeze_depths") or ()) if ft.get("mode") == "top" else (),
            ),
            tuner=part(TunerSpec, {**tuner, "objective": Objective(str(tuner.get("objective", "val_accuracy")))}),
            pruning=part(PruningSpec, config.get("pruning")),
            finalists=part(FinalistsSpec, config.get("finalists")),
            cache=part(CacheSpec, {**(config.get("feature_cache") or {}), "enabled": config.get("cache", True)}),
            device=part(DeviceSpec, config),
            distributed=part(DistributedSpec, config.get("distributed")),
            export=part(ExportSpec, config.get("export")),
            report=part(ReportSpec, config.get("report")),
            race=part(RaceSpec, config.get("race")),
            optimizers=dict(config.get("optimizer") or {}),
            class_weight=config.get("class_weight"),
            seed=int(config.get("seed", 0)),
            budget_s=_budget(config.get("budget")),
            verbose=bool(config.get("verbose", True)),
            resume=config.get("resume", False),
            allow_data_change=bool(config.get("allow_data_change", False)),
            source=config,
        )

    def _problem(self) -> str | None:
        """The rules that relate several groups."""
        lr = self.search
        if lr.lr_min <= 0 or lr.lr_max <= 0:
            return (
                f"search.learning_rate.min={lr.lr_min} and max={lr.lr_max} must be positive numbers, "
                "e.g. min=1e-4 max=1e-2"
            )
        if lr.lr_min > lr.lr_max:
            return f"search.learning_rate.min={lr.lr_min} is larger than max={lr.lr_max}; swap them"
        if lr.lr_sampling not in SAMPLINGS:
            return f"search.learning_rate.sampling={lr.lr_sampling} must be one of: {', '.join(SAMPLINGS)}"
        loaded = list(self.optimizers)
        if not lr.optimizers:
            return f"search.optimizers is empty; choose from {loaded}"
        unloaded = next((name for name in lr.optimizers if name not in loaded), None)
        if unloaded:
            return (
                f"search.optimizers names '{unloaded}', which is not loaded; "
                f"load it with optimizer=[{','.join([*loaded, unloaded])}] (loaded: {', '.join(loaded)})"
            )
        if self.training.mode == "top" and (not lr.depths or any(d < 0 for d in lr.depths)):
            depths = list(lr.depths)
            return f"search.unfreeze_depths={depths} must be a non-empty list of whole numbers ≥ 0, e.g. [0,5,10]"
        if self.pruning.rule != "none" and self.tuner.sizes_itself:
            rule = self.pruning.rule
            return f"pruning={rule} with tuner=hyperband: Hyperband stops trials early itself; use pruning=none"
        if not 0 <= self.seed <= MAX_SEED:
            return f"seed={self.seed} must be a whole number from 0 to {MAX_SEED}"
        if self.budget_s is not None and self.distributed.role:
            return (
                f"budget={self.source.get('budget')} cannot be used with distributed.role={self.distributed.role}: "
                "the chief would wait for trials its workers no longer start; bound a distributed search with "
                "tuner.max_trials instead"
            )
        return _class_weight_problem(self.class_weight)


IDENTITY_GROUPS = ("dataset", "backbone", "augmentation", "optimizer", "finetune", "tuner", "search")
# Settings that cannot change a run's results, or may change on resume by design (more trials).
NOT_IDENTITY = ("dataset.workers", "tuner.max_trials", "tuner.max_consecutive_failed_trials")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _missing(config: dict[str, Any]) -> list[str]:
    """Keys Hydra left at ``???`` (a group option that must be completed)."""
    return [k for k, v in _flatten(config).items() if v == "???"]


def _budget(budget: Any) -> float | None:
    try:
        return budget_seconds(budget)
    except ValueError:
        raise TlsweepError(
            f"budget={budget} is not a duration; use e.g. budget=90s, budget=30m, budget=2h or budget=1h30m"
        ) from None


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
