"""The classifier of a trial: augmentation → preprocessing → backbone → head.

The model is built from four named blocks so the frozen part (``preprocessing`` and
``backbone``) and the trained part (``head``, plus the backbone's unfrozen top in stage 2)
can be told apart: ``model.get_layer("backbone")``, ``model.get_layer("head")``.
"""

from __future__ import annotations

from typing import Any

import keras
from omegaconf import DictConfig

from tlsweep.backbones import preprocessing_layer
from tlsweep.errors import TlsweepError
from tlsweep.hub import HubLayer

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def augmentation(cfg: DictConfig, seed: int) -> keras.Sequential | None:
    """Random augmentation layers from the ``augmentation`` config; active in training only."""
    layers: list[keras.layers.Layer] = []
    if cfg.flip:
        if cfg.flip not in FLIP_MODES:
            raise TlsweepError(f"augmentation.flip={cfg.flip} is not one of {', '.join(FLIP_MODES)} or null")
        layers.append(keras.layers.RandomFlip(cfg.flip, seed=seed))
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, seed=seed + 1))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, seed=seed + 2))
    if cfg.height or cfg.width:  # stretch each axis on its own; the image keeps its size
        layers.append(
            keras.layers.RandomZoom((-cfg.height, cfg.height), (-cfg.width, cfg.width), seed=seed + 3, name="stretch")
        )
    return keras.Sequential(layers, name="augmentation") if layers else None


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
    backbone: keras.Model,
    preprocessing: str,
    num_classes: int,
    dropout: float,
    augment: keras.Sequential | None,
) -> keras.Model:
    """The trial's model; the backbone starts frozen and always runs in inference mode.

    ``training=False`` keeps BatchNorm statistics fixed even when the backbone's top is
    unfrozen in stage 2, as fine-tuning a pretrained network needs.
    """
    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    x = augment(inputs) if augment is not None else inputs
    x = preprocessing_layer(preprocessing)(x)
    features = backbone(x, training=False)
    outputs = head(num_classes, dropout, pool=len(features.shape) == 4)(features)
    return keras.Model(inputs, outputs, name="classifier")


def inference_model(model: keras.Model) -> keras.Model:
    """The classifier without its augmentation block, for export and serving.

    Keras' random augmentation layers default to training mode when a graph is traced without a
    ``training`` flag (as ``export`` does), so a SavedModel or TFLite file would augment every
    image it serves. Every other block is shared with ``model``, weights included.
    """
    inputs = keras.Input(model.input_shape[1:], name="image")
    x = inputs
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "augmentation":
            x = layer(x, training=False)
    return keras.Model(inputs, x, name="classifier")


def backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers from input to output, without its input layer."""
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def _hub_layer(backbone: keras.Model) -> HubLayer | None:
    layers = backbone_layers(backbone)
    return layers[0] if len(layers) == 1 and isinstance(layers[0], HubLayer) else None


def depth_units(backbone: keras.Model) -> int:
    """How deep the backbone can be unfrozen: its layers, or a hub model's blocks (see ``tlsweep.hub``)."""
    hub = _hub_layer(backbone)
    return len(hub.blocks) if hub is not None else len(backbone_layers(backbone))


def unfreeze_top(model: keras.Model, depth: int) -> int:
    """Make the top ``depth`` backbone layers (hub blocks) trainable, BatchNorm excepted; returns how many are.

    Recompile the model afterwards: Keras reads ``trainable`` when it compiles.
    """
    backbone = model.get_layer("backbone")
    layers = backbone_layers(backbone)
    backbone.trainable = depth > 0
    hub = _hub_layer(backbone)
    if hub is not None:
        return hub.unfreeze_top(depth)
    first = len(layers) - depth
    for i, layer in enumerate(layers):
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable for layer in layers) if depth > 0 else 0


def crossing_tensors(backbone: keras.Model, depth: int) -> list[Any]:
    """The tensors that flow from the frozen bottom into the top ``depth`` layers of ``backbone``.

    A cut inside a residual block has more than one (the block's input reaches its ``add`` by the
    skip connection); a cut at depth 0 has one, the backbone's output.
    """
    layers = backbone_layers(backbone)
    if depth <= 0:
        return [backbone.output]
    top = layers[len(layers) - depth :]
    produced_above = {id(t) for layer in top for t in keras.tree.flatten(layer.output)}
    crossing: list[Any] = []
    for layer in top:
        for tensor in keras.tree.flatten(layer.input):
            if id(tensor) not in produced_above and all(tensor is not c for c in crossing):
                crossing.append(tensor)
    return crossing


def trainable_part(model: keras.Model, depth: int) -> keras.Model:
    """The classifier above the cut at ``depth``: cached tensors in, class probabilities out.

    It shares its layers (and so its weights) with ``model``: training it trains ``model``.
    """
    backbone, head_block = model.get_layer("backbone"), model.get_layer("head")
    if depth <= 0:
        features = keras.Input(backbone.output.shape[1:], name="features")
        return keras.Model(features, head_block(features), name="cached_head")
    crossing = crossing_tensors(backbone, depth)
    top = keras.Model(crossing, backbone.output, name="backbone_top")
    inputs = [keras.Input(t.shape[1:], name=f"cut_{i}") for i, t in enumerate(crossing)]
    features = top(inputs, training=False)  # BatchNorm in inference mode, as in the classifier
    return keras.Model(inputs, head_block(features), name="cached_top")


def compile_model(model: keras.Model, optimizer: Any, jit_compile: bool | str = False) -> None:
    """Compile for integer class labels with accuracy; ``jit_compile=True`` compiles the steps with XLA."""
    if keras.mixed_precision.global_policy().name.startswith("mixed"):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # keeps small float16 gradients from vanishing
    model.compile(
        optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile
    )
