"""The classifier of a trial, whatever its task: augmentation → preprocessing → backbone → head.

The model is built from four named blocks so the frozen part (``preprocessing`` and
``backbone``) and the trained part (``head``, plus the backbone's unfrozen top in stage 2)
can be told apart: ``model.get_layer("backbone")``, ``model.get_layer("head")``. The task gives
the input, its preprocessing (pixels rescaled, text tokenized) and any augmentation
(``tlsweep.backbone.Backbone``). A job builds its classifier once (``SharedClassifier``) and resets
it for every trial.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tlsweep import files
from tlsweep.backbone import Backbone, backbone_layers, crossing_tensors, hub_layer

STEPS_PER_EXECUTION = 32  # batches per compiled call: a small head on cached tensors is bound by per-step overhead
BUILT_DROPOUT = 0.5  # the head's rate when built: any rate > 0 (Keras gives a rate of 0 no random state); each trial
# sets its own (``SharedClassifier.fresh``)
MAX_TRAINERS = 8  # compiled training steps a job keeps: one per stage's depth and compile-time values, oldest out


def head(num_classes: int, dropout: float, pool: bool = True) -> keras.Sequential:
    """The new classifier: global average pooling → dropout → softmax (hub feature vectors come pooled)."""
    return keras.Sequential(
        [
            *([keras.layers.GlobalAveragePooling2D(name="pool")] if pool else []),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier"),
        ],
        name="head",
    )


def build_classifier(
    backbone: Backbone,
    num_classes: int,
    dropout: float,
    augment: keras.Layer | None,
    network: keras.Model | None = None,
) -> keras.Model:
    """The trial's model on ``network`` (a new build of ``backbone``'s by default); the backbone starts frozen and
    always runs in inference mode.

    ``training=False`` keeps BatchNorm statistics fixed even when the backbone's top is
    unfrozen in stage 2, as fine-tuning a pretrained network needs.
    """
    network = network or backbone.build()
    network.trainable = False
    inputs = keras.Input(backbone.inputs.shape, dtype=backbone.inputs.dtype, name=backbone.inputs.name)
    x = augment(inputs) if augment is not None else inputs
    x = backbone.preprocess()(x)
    features = network(x, training=False)
    outputs = head(num_classes, dropout, pool=len(features.shape) == 4)(features)
    return keras.Model(inputs, outputs, name="classifier")


def inference_model(model: keras.Model) -> keras.Model:
    """The classifier without its augmentation block, for export and serving.

    Keras' random augmentation layers default to training mode when a graph is traced without a
    ``training`` flag (as ``export`` does), so a SavedModel or TFLite file would augment every
    image it serves. Every other block is shared with ``model``, weights included.
    """
    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    x = inputs
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "augmentation":
            x = layer(x, training=False)
    return keras.Model(inputs, x, name="classifier")


def unfreeze_top(model: keras.Model, backbone: Backbone, depth: int) -> int:
    """Make the top ``depth`` units of ``model``'s backbone (built from ``backbone``) trainable, BatchNorm
    excepted; returns how many layers (hub blocks) are. A unit is a layer, a hub model's block, or a
    transformer block with what sits above it (``Backbone.cut_depth``).

    Recompile the model afterwards: Keras reads ``trainable`` when it compiles.
    """
    network = model.get_layer("backbone")
    layers = backbone_layers(network)
    network.trainable = depth > 0
    hub = hub_layer(network)
    if hub is not None:
        return hub.unfreeze_top(depth)
    first = len(layers) - backbone.cut_depth(depth)
    for i, layer in enumerate(layers):
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable for layer in layers) if depth > 0 else 0


def trainable_part(model: keras.Model, cut: int) -> keras.Model:
    """The classifier above its backbone's top ``cut`` network layers (``Backbone.cut_depth``): cached
    tensors in (at 0, the pooled features), class probabilities out.

    It shares its layers (and so its weights) with ``model``: training it trains ``model``.
    """
    backbone, head_block = model.get_layer("backbone"), model.get_layer("head")
    if cut <= 0:  # the backbone's output comes pooled: the head's layers after its pooling
        features = keras.Input(backbone.output.shape[-1:], name="features")
        x = features
        for layer in head_block.layers:
            x = x if layer.name == "pool" else layer(x)
        return keras.Model(features, x, name="cached_head")
    crossing = crossing_tensors(backbone, cut)
    top = keras.Model(crossing, backbone.output, name="backbone_top")
    inputs = [keras.Input(t.shape[1:], name=f"cut_{i}") for i, t in enumerate(crossing)]
    features = top(inputs, training=False)  # BatchNorm in inference mode, as in the classifier
    return keras.Model(inputs, head_block(features), name="cached_top")


class ConfusionScore(keras.metrics.Metric):
    """A score from the confusion matrix of integer labels and predicted probabilities (rows: true class)."""

    def __init__(self, num_classes: int, name: str, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.confusion = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="confusion")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        ops, k = keras.ops, self.num_classes
        true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), k, dtype="float32")
        predicted = ops.one_hot(ops.argmax(ops.reshape(y_pred, (-1, k)), axis=-1), k, dtype="float32")
        self.confusion.assign_add(ops.matmul(ops.transpose(true), predicted))

    def reset_state(self) -> None:
        self.confusion.assign(keras.ops.zeros_like(self.confusion))

    def recall(self) -> Any:
        """Each class's recall (NaN for a class without examples)."""
        ops = keras.ops
        support = ops.sum(self.confusion, axis=1)
        return ops.diagonal(self.confusion) / ops.where(support > 0, support, float("nan"))


class BalancedAccuracy(ConfusionScore):
    """The mean of the classes' recalls: a majority class cannot carry it, as it carries accuracy."""

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs: Any) -> None:
        super().__init__(num_classes, name, **kwargs)

    def result(self) -> Any:
        recall = self.recall()
        present = keras.ops.logical_not(keras.ops.isnan(recall))
        return keras.ops.sum(keras.ops.where(present, recall, 0.0)) / keras.ops.maximum(
            keras.ops.sum(keras.ops.cast(present, "float32")), 1.0
        )


class MacroF1(ConfusionScore):
    """The mean of the classes' F1 scores, over the classes that occur in the labels or the predictions."""

    def __init__(self, num_classes: int, name: str = "macro_f1", **kwargs: Any) -> None:
        super().__init__(num_classes, name, **kwargs)

    def result(self) -> Any:
        ops = keras.ops
        hits = ops.diagonal(self.confusion)
        seen = ops.sum(self.confusion, axis=1) + ops.sum(self.confusion, axis=0)  # 2·TP + FP + FN
        f1 = ops.where(seen > 0, 2 * hits / ops.maximum(seen, 1.0), 0.0)
        return ops.sum(f1) / ops.maximum(ops.sum(ops.cast(seen > 0, "float32")), 1.0)


class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer class labels against smoothed targets (1 - s on the class, s spread over all):
    Keras 3's sparse cross-entropy takes no label smoothing, and its categorical one wants one-hot labels."""

    def __init__(self, smoothing: float, name: str = "smoothed_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}


def compile_model(
    model: keras.Model,
    optimizer: Any = None,
    jit_compile: bool | str = False,
    scores: list[Any] | None = None,
    label_smoothing: float = 0.0,
) -> None:
    """Compile for integer class labels with accuracy and ``scores`` (more metrics; no optimizer: for scoring
    only); ``jit_compile=True`` compiles the steps with XLA; ``label_smoothing`` smooths the training loss'
    targets. Set ``trainable`` first: the optimizer is built for what trains now."""
    if optimizer is not None and keras.mixed_precision.global_policy().name.startswith("mixed"):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # keeps small float16 gradients from vanishing
    model.compile(
        optimizer=optimizer,
        loss=SmoothedCrossEntropy(label_smoothing) if label_smoothing else "sparse_categorical_crossentropy",
        metrics=["accuracy", *(scores or [])],
        jit_compile=jit_compile,
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    _build_state(model)


def _build_state(model: keras.Model) -> None:
    """Create the optimizer's and the metrics' variables now, on one blank example.

    Keras would create them while tracing the first step, and a ``tf.function`` that creates
    variables is traced twice: that doubled the seconds each (unfreeze depth, optimizer) cost.
    """
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)
    x = keras.tree.map_structure(_blank, model.input)
    y = np.zeros((1,), "int32")
    model.compute_metrics(x, y, model(x, training=False))
    model.reset_metrics()


def _blank(tensor: Any) -> np.ndarray:
    """One example of ``tensor``'s shape and kind, all zeros (or empty strings)."""
    shape = (1, *tensor.shape[1:])
    return np.full(shape, "", dtype=object) if tensor.dtype == "string" else np.zeros(shape, tensor.dtype)


@dataclass(frozen=True)
class Snapshot:
    """A run's trained weights: the backbone variables it may have changed (by position), and the head's."""

    backbone: dict[int, np.ndarray]
    head: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.backbone.values()) + sum(a.nbytes for a in self.head)

    def save(self, path: Path, tag: dict[str, Any]) -> None:
        """Write it to ``path`` (atomically), tagged with what run it is of: a resumed job reads it back."""
        arrays = {f"backbone_{i}": a for i, a in self.backbone.items()}
        arrays.update({f"head_{j}": a for j, a in enumerate(self.head)})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, tag=np.array(json.dumps(tag, sort_keys=True)), **arrays)

        files.atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, tag: dict[str, Any]) -> Snapshot | None:
        """The snapshot saved at ``path`` if it is of the run ``tag`` names; None if missing, damaged or another's."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["tag"])) != json.loads(json.dumps(tag)):  # as JSON reads it back
                    return None
                backbone = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("backbone_")}
                head = [data[f"head_{j}"] for j in range(sum(k.startswith("head_") for k in data.files))]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        return cls(backbone, head)


def weights_bytes(network: keras.Model, backbone: Backbone, depth: int) -> int:
    """At most what one ``Snapshot`` of a run at unfreeze ``depth`` takes: the variables of the units
    ``unfreeze_top`` makes trainable (the head's, a few kilobytes, aside). The cache's plan reserves it."""
    if depth <= 0:
        return 0
    layers = backbone_layers(network)
    trained = layers if hub_layer(network) is not None else layers[len(layers) - backbone.cut_depth(depth) :]
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for layer in trained for v in layer.weights)


class SharedClassifier:
    """The job's classifier: built once, reset for every trial, each training step traced once.

    Building a backbone and tracing a training step take seconds, more than a trial spends
    training a head on cached features. So a trial does not build its own: it resets this one
    to what a fresh build gives (the pretrained backbone, frozen; a head and augmentation drawn
    from the current random seed) and trains with the compiled model kept for its stage's
    (unfreeze depth, optimizer), whose optimizer state is reset too. A trial trains the same
    whichever trials ran before it.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        augment: Callable[[], keras.Layer | None],
        jit_compile: bool | str = False,
    ) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.new_head = lambda pool: head(num_classes, BUILT_DROPOUT, pool)
        self.new_augmentation = augment  # a fresh augmentation block, seeded the same every time
        self.jit_compile = jit_compile
        self.model = build_classifier(backbone, num_classes, BUILT_DROPOUT, augment())
        self.network = self.model.get_layer("backbone")  # the classifier's backbone, pretrained until trained
        self._changed: set[int] = set()  # backbone variables (by position) a trainer may have changed since the reset
        self._trainers: OrderedDict[Any, tuple[keras.Model, list[np.ndarray], list[int]]] = OrderedDict()
        self._evaluators: dict[Any, tuple[keras.Model, BalancedAccuracy]] = {}
        logging.getLogger("tensorflow").addFilter(_one_trace_per_model)

    def fresh(self, dropout: float = BUILT_DROPOUT, everything: bool = False) -> keras.Model:
        """The classifier as a new build would make it now: pretrained frozen backbone, newly drawn head with
        the trial's ``dropout``.

        Only the backbone variables a trainer has trained since the last reset are restored, or
        ``everything`` when weights may have been loaded into the classifier (Hyperband does).
        """
        weights = self.network.weights
        for i in range(len(weights)) if everything else sorted(self._changed):
            weights[i].assign(self.backbone.weights[i])
        self._changed.clear()
        self.network.trainable = False
        features = self.network.output.shape
        head_block = self.model.get_layer("head")
        _reset_from(head_block, self.new_head(len(features) == 4), features)
        head_block.get_layer("dropout").rate = dropout  # a compiled step holds its rate: trainers are keyed by it
        if any(layer.name == "augmentation" for layer in self.model.layers):
            _reset_from(self.model.get_layer("augmentation"), self.new_augmentation(), self.model.input_shape)
        return self.model

    def snapshot(self) -> Snapshot:
        """What the last run changed — the head, and the backbone variables trained since the reset — to
        restore it later without training again (a fraction of the model's memory for a shallow unfreeze)."""
        weights, head_block = self.network.weights, self.model.get_layer("head")
        return Snapshot({i: weights[i].numpy() for i in sorted(self._changed)}, head_block.get_weights())

    def restore(self, snapshot: Snapshot) -> keras.Model:
        """The classifier as the run ``snapshot`` was taken of left it (its kept epoch)."""
        model = self.fresh()
        weights = self.network.weights
        for i, value in snapshot.backbone.items():
            weights[i].assign(value)
        self._changed.update(snapshot.backbone)
        model.get_layer("head").set_weights(snapshot.head)
        return model

    def trainer(
        self,
        key: Any,
        make_model: Callable[[], keras.Model],
        make_optimizer: Callable[[], Any],
        learning_rate: float,
        label_smoothing: float = 0.0,
    ) -> keras.Model:
        """The compiled model for ``key``, its optimizer as new and its learning rate set.

        ``key`` must hold everything the compiled step holds — where the stage trains (its cut and unfreeze
        depth) and every value compiled into it (``TrainingSpec.compiled_with``: the optimizer and its weight
        decay, the loss' label smoothing, the dropout rate) — or a trial would train with another trial's
        values. ``make_model`` gives the model that trains (the classifier, or its part above a cut); it
        shares its layers with the classifier. Set the layers' ``trainable`` first: the step traced on first
        use trains the variables that were trainable then. The ``MAX_TRAINERS`` most recent are kept.
        """
        if key not in self._trainers:
            model = make_model()
            compile_model(model, make_optimizer(), self.jit_compile, label_smoothing=label_smoothing)
            position = {id(v): i for i, v in enumerate(self.network.weights)}
            trained = [position[id(v)] for v in model.trainable_variables if id(v) in position]
            self._trainers[key] = (model, [v.numpy() for v in model.optimizer.variables], trained)
            while len(self._trainers) > MAX_TRAINERS:
                self._trainers.popitem(last=False)
        self._trainers.move_to_end(key)
        model, initial, trained = self._trainers[key]
        self._changed.update(trained)
        for variable, value in zip(model.optimizer.variables, initial, strict=True):
            variable.assign(value)
        model.optimizer.learning_rate = learning_rate
        return model

    def evaluator(self, key: Any, make_model: Callable[[], keras.Model]) -> keras.Model:
        """The compiled model that scores validation data for ``key`` (where the cached tensors enter).

        Its evaluation step is traced once for every trainer that starts there, whatever
        optimizer they use: Keras would trace one for each compiled model.
        """
        if key not in self._evaluators:
            model = make_model()
            balanced = BalancedAccuracy(self.num_classes)
            compile_model(model, jit_compile=self.jit_compile, scores=[balanced, MacroF1(self.num_classes)])
            self._evaluators[key] = (model, balanced)
        return self._evaluators[key][0]

    def recall(self, key: Any) -> list[float | None]:
        """Each class's recall in the last evaluation of ``key``'s evaluator (None: no example of the class)."""
        recall = keras.ops.convert_to_numpy(self._evaluators[key][1].recall())
        return [None if np.isnan(r) else float(r) for r in recall]


def _one_trace_per_model(record: logging.LogRecord) -> bool:
    """Drop TensorFlow's retracing warning: each (depth, optimizer) traces its own step, once, by design."""
    return "triggered tf.function retracing" not in record.getMessage()


def _reset_from(block: keras.Layer, fresh: keras.Layer, input_shape: Any) -> None:
    """Give ``block`` the state of the newly built ``fresh`` (weights and random-seed state)."""
    fresh.build(input_shape)
    for variable, value in zip(block.variables, fresh.variables, strict=True):
        variable.assign(value)
