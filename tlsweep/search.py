"""The KerasTuner search inside a job: a two-stage trial as a ``HyperModel``, and tlsweep's tuners.

``TransferHyperModel.build`` declares the searched hyperparameters (learning rate, optimizer,
unfreeze depth) so KerasTuner records them; ``fit`` runs both stages on one epoch axis, on
images (the plain way) or on the feature cache's tensors. The tuners are KerasTuner's own, with
``SweepTuner`` mixed in to seed and log each trial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from hydra.utils import instantiate
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch
from omegaconf import DictConfig, OmegaConf

from tlsweep import files
from tlsweep.backbones import Backbone
from tlsweep.cache import CachedData, PlainData
from tlsweep.errors import TlsweepError, is_disk_full
from tlsweep.logs import TrialLog
from tlsweep.model import SharedClassifier, augmentation, unfreeze_top

log = logging.getLogger(__name__)


def objective(cfg: DictConfig) -> kt.Objective:
    """The tuner's objective: losses are minimised, everything else maximised."""
    name = cfg.tuner.objective
    return kt.Objective(name, "min" if name.endswith("loss") else "max")


def stage_plan(
    head_epochs: int, finetune_epochs: int, epochs: int | None = None, initial_epoch: int = 0
) -> list[tuple[str, int, int]]:
    """The (stage, first epoch, end epoch) of each ``fit`` of a trial, on one epoch axis.

    ``epochs`` is a budget set by the tuner (Hyperband); it is split between the stages in
    the ratio ``head_epochs : finetune_epochs``.
    """
    total = head_epochs + finetune_epochs if epochs is None else epochs
    boundary = head_epochs
    if epochs is not None and finetune_epochs:
        boundary = max(1, round(total * head_epochs / (head_epochs + finetune_epochs)))
    plan = []
    if initial_epoch < min(boundary, total):
        plan.append(("head", initial_epoch, min(boundary, total)))
    if finetune_epochs and total > max(boundary, initial_epoch):
        plan.append(("finetune", max(boundary, initial_epoch), total))
    return plan


DIVERGED_LOSS = 1e6  # a cross-entropy this large means the weights blew up: stop the trial


class BestWeights(keras.callbacks.Callback):
    """Keeps the best epoch of a trial and rolls stage 2 back when it did not beat stage 1.

    Only trainable variables change during a stage, so only they are snapshotted (in memory):
    the head in stage 1, the head and the unfrozen top in stage 2.
    """

    def __init__(self, objective: kt.Objective) -> None:
        super().__init__()
        self.objective = objective
        self.best: dict[str, Any] | None = None  # value, epoch, stage, loss of the trial's best epoch
        self.stage_bests: dict[str, dict[str, Any]] = {}
        self.rolled_back = False
        self.diverged_at: int | None = None
        self.stage = "head"

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._variables = list(self.model.trainable_variables)
        self._start = [v.numpy() for v in self._variables]
        self._stage_best: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        loss = logs.get("loss", 0.0)
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            self.diverged_at = epoch + 1
            self.model.stop_training = True
            return
        value = logs.get(self.objective.name)
        if value is None or not math.isfinite(value):
            return
        if self._stage_best is None or self.objective.better_than(value, self._stage_best["value"]):
            self._stage_best = {
                "value": float(value),
                "epoch": epoch + 1,
                "stage": self.stage,
                "val_loss": float(logs.get("val_loss", math.nan)),
                "weights": [v.numpy() for v in self._variables],
            }

    def on_train_end(self, logs: dict | None = None) -> None:
        stage_best = self._stage_best
        if stage_best is not None:
            self.stage_bests[self.stage] = {k: v for k, v in stage_best.items() if k != "weights"}
        if stage_best is not None and (
            self.best is None or self.objective.better_than(stage_best["value"], self.best["value"])
        ):
            self._restore(stage_best["weights"])
            self.best = self.stage_bests[self.stage]
        else:
            self._restore(self._start)
            self.rolled_back = self.stage == "finetune"

    def _restore(self, values: list[np.ndarray]) -> None:
        for variable, value in zip(self._variables, values, strict=True):
            variable.assign(value)


class Validate(keras.callbacks.Callback):
    """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, as ``fit(validation_data=…)`` would.

    The scores come from an evaluator shared by every trainer with the same inputs (see
    ``SharedClassifier.evaluator``), so an evaluation step is traced once per cut, not once per
    optimizer. Put it first: the callbacks after it read the scores.
    """

    def __init__(self, evaluator: keras.Model, data: Any) -> None:
        super().__init__()
        self.evaluator, self.data = evaluator, data

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.evaluator.evaluate(self.data, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})


class OnWholeModel(keras.callbacks.Callback):
    """Runs a KerasTuner callback on the whole classifier while a model sharing its layers trains."""

    def __init__(self, inner: keras.callbacks.Callback, whole: keras.Model) -> None:
        super().__init__()
        self.inner, self.whole = inner, whole

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.inner.set_model(self.whole)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.inner.on_train_begin(logs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.inner.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.inner.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.inner.on_train_end(logs)


class TransferHyperModel(kt.HyperModel):
    """A two-stage transfer-learning trial: train a new head, then fine-tune the backbone's top."""

    def __init__(self, cfg: DictConfig, backbone: Backbone, num_classes: int, source: PlainData | CachedData) -> None:
        super().__init__(name="transfer")
        self.cfg = cfg
        self.backbone = backbone
        self.source = source  # where each stage's batches come from: images, or cached tensors
        self.classifier = SharedClassifier(
            backbone,
            num_classes,
            float(cfg.finetune.dropout),
            lambda: augmentation(cfg.augmentation, int(cfg.seed)),
            bool(cfg.jit_compile),
        )
        # Hyperband continues a trial from its checkpoint; the other tuners never read one (best.keras
        # holds the job's best model), so only Hyperband's trials write theirs, once, at the end.
        self.keep_checkpoints = cfg.tuner.name == "hyperband"

    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Declare the searched hyperparameters and return this trial's values."""
        search, mode = self.cfg.search, self.cfg.finetune.mode
        lr = search.learning_rate
        step = self.cfg.tuner.get("learning_rate_step")  # grid search needs discrete points
        values = {
            "learning_rate": hp.Float("learning_rate", lr.min, lr.max, sampling=lr.sampling, step=step),
            "optimizer": hp.Choice("optimizer", list(search.optimizers)),
        }
        if mode == "top":
            values["unfreeze_depth"] = hp.Choice("unfreeze_depth", [int(d) for d in search.unfreeze_depths])
        elif mode == "full":
            values["unfreeze_depth"] = hp.Fixed("unfreeze_depth", self.backbone.num_layers)
        return values

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The job's classifier, reset for this trial (see ``SharedClassifier``); ``fit`` compiles what trains."""
        self.declare(hp)
        return self.classifier.fresh(everything=self.keep_checkpoints)  # Hyperband loads checkpoints into it

    def optimizer(self, name: str, learning_rate: float) -> keras.optimizers.Optimizer:
        """A fresh optimizer from the ``optimizer`` group's settings for ``name``."""
        return instantiate(self.cfg.optimizer[name], learning_rate=float(learning_rate))

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        *args: Any,
        callbacks: list | None = None,
        epochs: int | None = None,
        initial_epoch: int = 0,
        trial_log: TrialLog | None = None,
        trial_seed: int = 0,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Stage 1 (head) then stage 2 (unfrozen top at lr × scale), keeping the best epoch.

        Batches are fixed by ``trial_seed`` and the epoch, so a trial trains the same way whether
        it runs first, tenth, again after a resume, or on cached tensors.
        """
        finetune = self.cfg.finetune
        ft_epochs = int(finetune.finetune_epochs) if finetune.mode != "none" else 0
        plan = stage_plan(int(finetune.head_epochs), ft_epochs, epochs, initial_epoch)
        best = BestWeights(objective(self.cfg))
        kwargs.pop("verbose", None)
        # KerasTuner's checkpoint callback saves the whole model at every better epoch, which costs
        # more than a cached epoch: BestWeights keeps the best epoch, saved once at the end instead.
        checkpoints = [c for c in callbacks or [] if isinstance(c, SaveBestEpoch)]
        tuner_callbacks = [OnWholeModel(c, model) for c in callbacks or [] if c not in checkpoints]
        name = hp.get("optimizer")
        for stage, first, end in plan:
            depth, lr = 0, hp.get("learning_rate")
            if stage == "finetune":
                depth = int(hp.get("unfreeze_depth"))
                unfreeze_top(model, depth)
                lr *= float(finetune.lr_scale)
            make_model, make_optimizer = partial(self.source.part, model, depth), partial(self.optimizer, name, lr)
            fit_model = self.classifier.trainer((depth, name), make_model, make_optimizer, lr)
            evaluator = self.classifier.evaluator(self.source.cut(depth), make_model)
            train, val = self.source.batches(depth, trial_seed)
            best.stage = stage
            extra = trial_log.callbacks() if trial_log else []
            if trial_log:
                trial_log.begin_stage(stage, plan[-1][2])
            fit_model.fit(
                train.dataset(),
                initial_epoch=first,
                epochs=end,
                steps_per_epoch=train.steps,
                verbose=0,
                callbacks=[train.callback(), Validate(evaluator, val.dataset()), *tuner_callbacks, best, *extra],
                **{"shuffle": False, **kwargs},  # EpochBatches already orders each epoch's batches
            )
            if best.diverged_at is not None:
                raise kt.errors.FailedTrialError(
                    f"the loss became NaN, infinite or exploded (> {DIVERGED_LOSS:g}) at epoch {best.diverged_at} "
                    "(learning rate too high for this optimizer?)"
                )
        if best.best is None:
            raise kt.errors.FailedTrialError("no epoch produced a finite validation metric")
        if self.keep_checkpoints:
            for checkpoint in checkpoints:
                model.save_weights(checkpoint.filepath)
        summary = {
            "best_epoch": best.best["epoch"],
            "best_stage": best.best["stage"],
            "val_loss": best.best["val_loss"],
            self.cfg.tuner.objective: best.best["value"],
            "stages": best.stage_bests,
            "rolled_back": best.rolled_back,
        }
        if trial_log:
            trial_log.finish(summary, model)
        return {self.cfg.tuner.objective: best.best["value"]}


@dataclass
class JobContext:
    """What every trial of a job shares: where it writes, and what to record beside the hyperparameters."""

    job_dir: Path
    logdir: Path  # what ``tensorboard --logdir`` is given: TensorBoard names each trial's run relative to it
    sweep: str  # the run's or sweep's folder, as TensorBoard shows it
    choices: dict[str, str]
    settings: dict[str, Any]
    objective: str
    data: dict[str, Any]  # classes, train_images, val_images
    verbose: bool = True
    seed: int = 0
    best: dict[str, Any] = field(default_factory=dict)


def read_best(job_dir: Path) -> dict[str, Any]:
    """Which trial ``best.keras`` holds (value, trial id, hyperparameters); empty when there is none yet."""
    path = Path(job_dir) / files.BEST_RECORD
    if not path.is_file() or not (Path(job_dir) / files.BEST_MODEL).is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class StopSearch(TlsweepError, kt.errors.FatalError):
    """A problem that ends the job's search (KerasTuner goes on after other errors, trial by trial)."""


def _out_of_memory(error: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError))


def trial_seed(seed: int, trial_id: str) -> int:
    """The seed of one trial: fixed by the job's seed and the trial's id, not by what ran before it."""
    return zlib.crc32(f"{seed}:{trial_id}".encode()) & 0x7FFFFFFF


def seed_keras(seed: int) -> None:
    """Seed what a trial draws: Keras layers take their seeds from Python's ``random`` when given none.

    ``keras.utils.set_random_seed`` would also call ``tf.random.set_seed``, which clears
    TensorFlow's kernel cache: every compiled step would then be set up again, about 0.2 s a
    stage. TensorFlow's own seed is set once per job, and no trial draws from it.
    """
    random.seed(seed)
    np.random.seed(seed)


class SweepTuner:
    """Mixed in before a KerasTuner tuner: logs each trial and keeps the job's best model on disk."""

    def __init__(self, *args: Any, job: JobContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job

    def _try_build(self, hp: kt.HyperParameters) -> keras.Model:
        """KerasTuner's, without clearing the Keras session and collecting garbage before every trial.

        That clean-up frees the previous trial's model; here every trial reuses the job's
        classifier (``SharedClassifier``), so there is nothing to free, and it cost a second a trial.
        """
        return self._build_hypermodel(hp)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        seed = trial_seed(self.job.seed, trial.trial_id)
        seed_keras(seed)  # before the model is reset: its initial weights, its dropout
        hp = trial.hyperparameters
        values = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
        number = int(trial.trial_id) + 1 if trial.trial_id.isdigit() else len(self.oracle.trials)
        total = self.oracle.max_trials
        label = f"trial {number}/{total}" if total else f"trial {number}"
        trial_log = TrialLog(
            self.job.job_dir,
            trial.trial_id,
            label,
            values,
            {
                "sweep": self.job.sweep,
                "choices": self.job.choices,
                "settings": self.job.settings,
                "objective": self.job.objective,
                "data": self.job.data,
                "worker": self.tuner_id,
            },
            self.job.verbose,
            self.job.logdir,
        )
        try:
            trial_log.start()
            results = super().run_trial(trial, *args, trial_log=trial_log, trial_seed=seed, **kwargs)
            self._keep_if_best(trial_log)  # before the record says completed: a model not saved fails its trial
            trial_log.complete()
        except Exception as e:
            if is_disk_full(e):  # every later trial would fail the same way: stop the job, keep what is written
                with contextlib.suppress(OSError):  # the record may not fit on the disk either
                    trial_log.fail(e)
                raise StopSearch(
                    f"the disk is full ({getattr(e, 'filename', None) or self.job.job_dir}); finished trials are "
                    "kept: free some space, then continue with resume=true"
                ) from e
            if _out_of_memory(e):
                e = kt.errors.FailedTrialError(
                    "out of memory; lower dataset.batch_size or dataset.image_size, or unfreeze fewer layers"
                )
            trial_log.fail(e)
            raise e from None
        return results

    def _keep_if_best(self, trial_log: TrialLog) -> None:
        """Save the trial's model as the job's ``best.keras`` when it beats every earlier trial."""
        record, model = trial_log.record, trial_log.model_to_keep
        trial_log.model_to_keep = None
        obj = self.oracle.objective
        value = record[obj.name]
        job_dir = self.job.job_dir
        with files.locked(job_dir / ".best.lock"):  # workers of a distributed search share best.keras
            best = self.job.best
            best.update(read_best(job_dir))  # another process may have saved a better trial meanwhile
            is_best = not best or obj.better_than(value, best["value"])
            if is_best and model is not None:
                origin = {"job": job_dir.name, "trial_id": record["trial_id"], "classes": self.job.data["classes"]}
                files.save_model(model, job_dir / files.BEST_MODEL, origin)
                files.write_text(job_dir / files.LABELS, "\n".join(self.job.data["classes"]) + "\n")
                best.update(value=value, trial_id=record["trial_id"], hyperparameters=record["hyperparameters"])
                files.write_json(job_dir / files.BEST_RECORD, best)
        best_line = f"best so far {best['value']:.4f} (trial_{best['trial_id']})"
        log.info(
            "%s done in %.0fs: %s %.4f at epoch %d%s; %s",
            trial_log.label,
            record["duration_s"],
            obj.name,
            value,
            record["best_epoch"],
            ", stage 2 rolled back" if record["rolled_back"] else "",
            best_line,
        )


class RandomSearch(SweepTuner, kt.RandomSearch):
    """KerasTuner's random search with tlsweep's trial logging."""


class BayesianOptimization(SweepTuner, kt.BayesianOptimization):
    """KerasTuner's Bayesian optimisation with tlsweep's trial logging."""


class Hyperband(SweepTuner, kt.Hyperband):
    """KerasTuner's Hyperband with tlsweep's trial logging; budgets split between the stages."""


class GridSearch(SweepTuner, kt.GridSearch):
    """KerasTuner's grid search with tlsweep's trial logging."""


TUNERS = {
    "random": RandomSearch,
    "bayesian": BayesianOptimization,
    "hyperband": Hyperband,
    "grid": GridSearch,
}


def make_tuner(cfg: DictConfig, hypermodel: TransferHyperModel, job: JobContext) -> kt.Tuner:
    """The tuner ``cfg.tuner`` names, keeping its state in ``<job>/tuner`` (KerasTuner's own format)."""
    t = cfg.tuner
    kwargs: dict[str, Any] = dict(
        hypermodel=hypermodel,
        objective=objective(cfg),
        directory=str(job.job_dir),
        project_name=files.TUNER_DIR,
        seed=int(cfg.seed) + 1,  # KerasTuner takes seed 0 for "no seed" and draws one at random
        max_consecutive_failed_trials=int(t.max_consecutive_failed_trials),
        job=job,
    )
    if t.name == "hyperband":
        ft = cfg.finetune.finetune_epochs if cfg.finetune.mode != "none" else 0
        kwargs.update(
            max_epochs=int(cfg.finetune.head_epochs + ft),
            factor=int(t.factor),
            hyperband_iterations=int(t.hyperband_iterations),
        )
    else:
        kwargs["max_trials"] = int(t.max_trials)
    if t.name == "bayesian":
        kwargs["num_initial_points"] = int(t.num_initial_points)
    try:
        return TUNERS[t.name](**kwargs)  # reloads the state of an interrupted search, if there is one
    except ValueError as e:  # KerasTuner's own state files are not written atomically; a kill can cut one
        state = job.job_dir / files.TUNER_DIR
        raise TlsweepError(
            f"KerasTuner's saved state in {state} is damaged ({type(e).__name__}: {e}); move that folder away "
            "to restart this job's search (the trial records in trials/ are kept)"
        ) from e


def job_settings(cfg: DictConfig, image_size: int) -> dict[str, Any]:
    """Fixed settings of a job worth comparing across jobs in TensorBoard's HParams table."""
    settings = {
        "image_size": image_size,
        "batch_size": cfg.dataset.batch_size,
        "head_epochs": cfg.finetune.head_epochs,
        "finetune_epochs": cfg.finetune.finetune_epochs if cfg.finetune.mode != "none" else 0,
        "lr_scale": cfg.finetune.lr_scale,
        "dropout": cfg.finetune.dropout,
        "weights": str(cfg.backbone.weights),
        "seed": cfg.seed,
    }
    return OmegaConf.to_container(OmegaConf.create(settings), resolve=True)  # type: ignore[return-value]


class TrainedElsewhere(kt.HyperModel):
    """The stand-in hypermodel of a reloaded job: its trials trained in ``python -m tlsweep``."""

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        raise TlsweepError(
            "a reloaded tlsweep tuner cannot build models; load the job's best model with "
            "keras.saving.load_model(job_dir / 'best.keras'), or run python -m tlsweep to train more trials"
        )


KERAS_TUNERS = {name: tuner.__bases__[1] for name, tuner in TUNERS.items()}  # KerasTuner's own classes


def load_tuner(job_dir: str | Path) -> kt.Tuner:
    """A job's KerasTuner project (``<job>/tuner``), reloaded with the job's tuner and objective.

    KerasTuner needs the objective's direction to rank trials: reloaded without it, its
    ``get_best_hyperparameters()`` silently returns the worst trial. Use the result to inspect
    trials (``results_summary()``, ``oracle.get_best_trials()``); it cannot train new ones.
    """
    job_dir = Path(job_dir)
    project = job_dir / files.TUNER_DIR
    if not (project / "oracle.json").is_file():
        raise TlsweepError(f"{job_dir} holds no KerasTuner project ({project}/oracle.json); give a job folder")
    config = _job_config(job_dir)
    tuner = config.get("tuner", {})
    name = str(tuner.get("name", "random"))
    objective = str(tuner.get("objective", "val_accuracy"))
    budget = {"max_epochs": 1} if name == "hyperband" else {"max_trials": int(tuner.get("max_trials", 1))}
    return KERAS_TUNERS[name](
        hypermodel=TrainedElsewhere(),
        objective=kt.Objective(objective, "min" if objective.endswith("loss") else "max"),
        directory=str(job_dir),
        project_name=files.TUNER_DIR,
        overwrite=False,
        **budget,
    )


def _job_config(job_dir: Path) -> dict[str, Any]:
    """The job's config as it ran: from ``job.json``, else the one Hydra saved when it started."""
    try:
        record = json.loads((job_dir / files.JOB_RECORD).read_text(encoding="utf-8"))
        if isinstance(record.get("config"), dict):
            return record["config"]
    except (OSError, ValueError):
        pass
    saved = job_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else {}  # type: ignore[return-value]

