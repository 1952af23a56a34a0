"""One trial of transfer learning: a new head on the frozen backbone, then the backbone's top unfrozen.

Both stages run on one epoch axis. ``TwoStageTrial.fit`` trains the job's classifier (reset by
``build`` to the pretrained backbone and a newly drawn head) on the batches of the job's source
— images, or the feature cache's tensors — and keeps the trial's best epoch. Change what a trial
does here; ``tlsweep.tuners`` only hands trials to KerasTuner.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate

from tlsweep.batches import Source
from tlsweep.groups import TrainingSpec
from tlsweep.logs import Fitted, TrialLog
from tlsweep.model import SharedClassifier, unfreeze_top
from tlsweep.objective import Objective
from tlsweep.records import DEPTH
from tlsweep.spec import JobSpec
from tlsweep.stopping import EarlyStop, StopRules

DIVERGED_LOSS = 1e6  # a cross-entropy this large means the weights blew up: stop the trial


class TrialFailed(Exception):
    """The trial cannot give a result (its loss diverged, or no epoch scored); the search goes on."""


def trial_seed(seed: int, hyperparameters: dict[str, Any], replicate: int = 0) -> int:
    """The seed of one run of a configuration: fixed by the job's seed, the trial's hyperparameters and
    which of the configuration's seeds it is (0: the search's; finalists add 1, 2, …) — not by its
    trial number or what ran before it, so a rerun of the same values trains the same."""
    key = json.dumps({"seed": seed, "hyperparameters": hyperparameters, "replicate": replicate}, sort_keys=True)
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def seed_keras(seed: int) -> None:
    """Seed what a trial draws: Keras layers take their seeds from Python's ``random`` when given none.

    ``keras.utils.set_random_seed`` would also call ``tf.random.set_seed``, which clears
    TensorFlow's kernel cache: every compiled step would then be set up again, about 0.2 s a
    stage. TensorFlow's own seed is set once per job, and no trial draws from it.
    """
    random.seed(seed)
    np.random.seed(seed)


class BestWeights(keras.callbacks.Callback):
    """Keeps the best epoch of a trial and rolls stage 2 back when it did not beat stage 1.

    Only trainable variables change during a stage, so only they are snapshotted (in memory):
    the head in stage 1, the head and the unfrozen top in stage 2.
    """

    def __init__(self, objective: Objective) -> None:
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
        if self._stage_best is None or self.objective.better(value, self._stage_best["value"]):
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
        improved = stage_best is not None and (
            self.best is None or self.objective.better(stage_best["value"], self.best["value"])
        )
        if stage_best is not None and improved:
            self._restore(stage_best["weights"])
            self.best = self.stage_bests[self.stage]
        else:
            self._restore(self._start)
            self.rolled_back = self.stage == "finetune"

    def _restore(self, values: list[np.ndarray]) -> None:
        for variable, value in zip(self._variables, values, strict=True):
            variable.assign(value)


class Finite(keras.callbacks.Callback):
    """Stops training at the first epoch whose loss is NaN or infinite (a refit has no best epoch to keep)."""

    diverged_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            self.diverged_at = epoch + 1
            self.model.stop_training = True


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


@dataclass
class TwoStageTrial:
    """A two-stage transfer-learning trial on the job's classifier and batch source."""

    spec: JobSpec
    classifier: SharedClassifier
    source: Source  # where each stage's batches come from: images, or cached tensors
    class_weight: dict[int, float] | None = None  # each class's weight in the training loss (class_weight=balanced)

    def settings(self, hp: Any) -> TrainingSpec:
        """This trial's own ``finetune`` settings: each knob of the search space (``tlsweep.space``) declared on
        KerasTuner's ``hp`` and set to the value it chose there. Where stage 2 trains is always recorded: a
        searched depth, or the one the job sets (all of the backbone with ``finetune=full``)."""
        spec = self.spec
        log_step = spec.tuner.log_step if spec.tuner.name == "grid" else None
        values = {knob.key: knob.declare(hp, log_step) for knob in spec.space}
        mode = spec.finetune.mode
        if mode != "none" and DEPTH not in values:
            depth = self.classifier.backbone.num_layers if mode == "full" else spec.finetune.unfreeze_depth
            values[DEPTH] = hp.Fixed(DEPTH, depth)
        return spec.finetune.with_values(values)

    def build(self, hp: Any) -> keras.Model:
        """The job's classifier, reset for this trial (see ``SharedClassifier``); ``fit`` compiles what trains."""
        settings = self.settings(hp)
        return self.classifier.fresh(settings.dropout, everything=self.spec.tuner.sizes_itself)  # Hyperband loads

    def fit(
        self,
        hp: Any,
        model: keras.Model,
        trial_log: TrialLog | None = None,
        seed: int = 0,
        epochs: int | None = None,
        initial_epoch: int = 0,
        rules: StopRules | None = None,
    ) -> Fitted:
        """Stage 1 (head) then stage 2 (unfrozen top at lr × scale), keeping the best epoch.

        Batches are fixed by ``seed`` and the epoch, so a trial trains the same way whether it
        runs first, tenth, again after a resume, or on cached tensors. A stage ends early after
        ``finetune.patience`` epochs without progress; the trial ends early when ``rules`` say so
        (pruning, the job's budget). Returns what it kept (best epoch and stage, each stage's best,
        whether stage 2 rolled back, why it stopped early).
        """
        spec, settings = self.spec, self.settings(hp)
        plan = spec.finetune.plan(epochs, initial_epoch)
        best = BestWeights(spec.objective)
        depth = None if spec.finetune.mode == "none" else settings.unfreeze_depth
        stop = EarlyStop(spec.objective, spec.finetune.patience, rules or StopRules(), depth)
        last_depth = 0  # where the last stage trained: its evaluator scores the kept weights at the end
        for stage, first, end in plan:
            best.stage = stage
            last_depth = depth if stage == "finetune" and depth is not None else 0
            stop.begin_stage(stage, end, plan[-1][2])
            if trial_log:
                trial_log.begin_stage(stage, plan[-1][2])
            self._fit_stage(settings, model, stage, (first, end), self.source, [best, stop], trial_log, seed)
            if best.diverged_at is not None:
                raise TrialFailed(
                    f"the loss became NaN, infinite or exploded (> {DIVERGED_LOSS:g}) at epoch {best.diverged_at} "
                    "(learning rate too high for this optimizer?)"
                )
            if stop.ends_trial:
                break
        if best.best is None:
            raise TrialFailed("no epoch produced a finite validation metric")
        kept, recall = best.best, self._recall(model, last_depth, seed, settings.batch_size)
        stops = tuple(stop.events)
        return Fitted(kept["epoch"], kept["stage"], kept["value"], best.rolled_back, best.stage_bests, stops, recall)

    def _recall(self, model: keras.Model, depth: int, seed: int, batch_size: int) -> list[float | None]:
        """Each class's recall on the validation images, with the weights the trial kept."""
        key = self.source.cut(depth)
        evaluator = self.classifier.evaluator(key, partial(self.source.part, model, depth))
        _, val = self.source.batches(depth, seed, batch_size)
        evaluator.evaluate(val.dataset(), verbose=0)
        return self.classifier.recall(key)

    def refit(
        self, hp: Any, model: keras.Model, source: Source, epochs: int, trial_log: TrialLog | None, seed: int
    ) -> Fitted:
        """Train the configuration for exactly ``epochs`` on ``source`` and keep the last epoch: the winner
        retrained on training + validation images for its best epoch count (nothing is held out to choose by)."""
        plan, settings = self.spec.finetune.refit_plan(epochs), self.settings(hp)
        finite = Finite()
        for stage, first, end in plan:
            if trial_log:
                trial_log.begin_stage(stage, epochs)
            self._fit_stage(settings, model, stage, (first, end), source, [finite], trial_log, seed, validate=False)
            if finite.diverged_at is not None:
                raise TrialFailed(f"the loss became NaN or infinite at epoch {finite.diverged_at} while refitting")
        return Fitted(epochs, plan[-1][0])

    def _fit_stage(
        self,
        settings: TrainingSpec,
        model: keras.Model,
        stage: str,
        epochs: tuple[int, int],
        source: Source,
        keep: list[keras.callbacks.Callback],
        trial_log: TrialLog | None,
        seed: int,
        validate: bool = True,
    ) -> None:
        """One stage: compile (or reuse) what trains at this depth on ``source``, then fit it from
        ``epochs[0]`` to ``epochs[1]``; ``keep`` (the best epoch's keeper, the early stop) sees each validated epoch."""
        depth, learning_rate = 0, settings.learning_rate
        if stage == "finetune":
            depth = int(settings.unfreeze_depth or 0)
            unfreeze_top(model, self.classifier.backbone, depth)
            learning_rate *= settings.lr_scale
        make_model = partial(source.part, model, depth)
        decay = {"weight_decay": settings.weight_decay} if settings.weight_decay else {}  # 0: as Keras' default
        make_optimizer = partial(instantiate, self.spec.optimizer[settings.optimizer], learning_rate=learning_rate,
                                 **decay)  # fmt: skip
        key = (source.cut(depth), depth, *settings.compiled_with())  # everything the compiled step holds
        trainer = self.classifier.trainer(key, make_model, make_optimizer, learning_rate, settings.label_smoothing)
        train, val = source.batches(depth, seed, settings.batch_size)
        scores = [Validate(self.classifier.evaluator(source.cut(depth), make_model), val.dataset())] if validate else []
        recording = trial_log.callbacks() if trial_log else []
        trainer.fit(
            train.dataset(),
            initial_epoch=epochs[0],
            epochs=epochs[1],
            steps_per_epoch=train.steps,
            verbose=0,
            shuffle=False,  # the batches already come in each epoch's order
            callbacks=[train.callback(), *scores, *keep, *recording],
            class_weight=self.class_weight,
        )
