"""KerasHub image presets: an image tower laid out as a network whose transformer blocks are its layers.

KerasHub keeps a ViT's or DINOv2's blocks inside one encoder layer, and a SigLIP or CLIP preset's
image tower inside a model that also holds a text tower. ``preset_network`` lays the image tower
out flat, ``stem → block_1 … block_n → final norm → pooling``, reusing the preset's own layers (and
so its weights): unfreeze depth counts transformer blocks, and the feature cache cuts between them.
LayerNorm has no batch statistics and trains with its block; the backbone runs with
``training=False``, so any BatchNorm inside a block stays in inference mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import keras

from tlsweep.kerashub import TokenPooling, keras_hub


class Converter(NamedTuple):
    """What a preset's own image converter does: the (scale, offset) mapping pixels 0..255 as the
    preset was trained, and the image side it was trained at (None if it does not say)."""

    rescaling: tuple[Any, Any]
    image_size: int | None


def preset_converter(folder: Path) -> Converter | None:
    """The preset's image converter; None when the preset has none."""
    if not (folder / "image_converter.json").is_file():
        return None
    converter = keras_hub().layers.ImageConverter.from_preset(str(folder))
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    size = int(converter.image_size[0]) if converter.image_size else None
    return Converter((_plain(scale), _plain(offset)), size)


def _plain(value: Any) -> Any:
    """A converter's scale or offset as a float or a list of floats (per channel)."""
    try:
        return float(value)
    except TypeError:
        return [float(v) for v in value]


def preset_network(
    folder: str,
    pooling: str = "cls",
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    name: str | None = None,
) -> PresetNetwork:
    """The preset's image tower laid out flat, with the signature of ``keras.applications``.

    ``weights="preset"`` loads the preset's weights; None leaves them random (they are set later).
    A size the architecture cannot take (learned position embeddings) is a ValueError.
    """
    if include_top:
        raise ValueError("KerasHub backbones are feature extractors without a classification top")
    config = json.loads((Path(folder) / "config.json").read_text()).get("config", {})
    shape_key = next((k for k in ("image_shape", "input_shape") if k in config), None)
    overrides = {shape_key: tuple(input_shape)} if shape_key else {}
    try:
        model = keras_hub().models.Backbone.from_preset(str(folder), load_weights=weights == "preset", **overrides)
    except ValueError as e:
        trained = config.get(shape_key) if shape_key else None
        if trained and trained[0] and tuple(trained[:2]) != tuple(input_shape[:2]):  # position embeddings of a size
            raise ValueError(f"its weights were trained for {trained[0]} px inputs") from e
        raise
    tower = getattr(model, "vision_encoder", None) or model  # SigLIP and CLIP hold an image and a text tower
    size = _input_size(tower)
    if size and size != tuple(input_shape[:2]):
        raise ValueError(f"its image tower takes {size[0]} px only")
    if pooling == "cls" and len(keras.tree.flatten(tower.outputs)[0].shape) == 3 and not _has_class_token(tower):
        raise ValueError("it has no class token; set backbone.pooling=mean")
    return PresetNetwork(tower, pooling, name=name or tower.name)


@keras.saving.register_keras_serializable(package="tlsweep")
class PresetNetwork(keras.Model):
    """An image tower's own layers in one functional graph, one layer per block, ending in a feature vector.

    Saved as the tower's config and the pooling, and rebuilt from them: KerasHub's layers inside
    an encoder cannot be saved on their own, while its backbones can.
    """

    def __init__(self, tower: keras.Model | dict[str, Any], pooling: str = "cls", **kwargs: Any) -> None:
        if isinstance(tower, dict):
            keras_hub()  # registers KerasHub's classes for deserialization
            tower = keras.saving.deserialize_keras_object(tower)
        layers = _relaid(tower)
        if layers is None:  # already one layer per block (or a CNN): the tower's own graph
            inputs, x = keras.tree.flatten(tower.inputs)[0], keras.tree.flatten(tower.outputs)[0]
        else:
            inputs = x = keras.Input(_input_shape(tower), name="images")
            for layer in layers:
                x = layer(x)
        if len(x.shape) == 3:  # a token sequence: pool it
            x = TokenPooling(pooling, _prefix_tokens(tower), name="token_pooling")(x)
        super().__init__(inputs, x, **kwargs)
        self.tower_config = json.dumps(keras.saving.serialize_keras_object(tower))
        self.pooling = pooling

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "tower": json.loads(self.tower_config), "pooling": self.pooling}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PresetNetwork:
        return cls(**config)


def _input_shape(tower: keras.Model) -> tuple[int | None, ...]:
    return tuple(keras.tree.flatten(tower.inputs)[0].shape[1:])


def _input_size(tower: keras.Model) -> tuple[int, int] | None:
    """The tower's fixed image size, or None when it takes any size."""
    height, width = _input_shape(tower)[:2]
    return (height, width) if height and width else None


def _relaid(tower: keras.Model) -> list[Any] | None:
    """The layers of an image tower that hides its blocks, in the order its forward pass calls them:
    stem, blocks, final norm. None for a tower that is already one layer per block (SigLIP, CLIP) or
    a CNN (EfficientNet, MobileNetV5): its own layers are the units.

    ViT and DINOv2 keep their blocks inside one encoder layer, whose attributes are read here
    (KerasHub exports no other way to reach them; the encoder's dropout is skipped, as inference
    skips it). ``tests/test_kerashub.py`` checks each re-laid network computes what the preset's
    does, and fails loudly if KerasHub changes.
    """
    kind = type(tower).__name__
    if kind == "ViTBackbone":
        encoder = next(layer for layer in tower.layers if type(layer).__name__ == "ViTEncoder")
        embedding = next(layer for layer in tower.layers if type(layer).__name__ == "ViTPatchingAndEmbedding")
        return [embedding, *encoder.encoder_layers, encoder.layer_norm]
    if kind == "DINOV2Backbone":
        return [tower.embeddings, *tower.encoder.layers, _own_copy(tower.layernorm)]
    return None


def _own_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A copy of a Keras layer, with its weights, that the tower's own graph never called.

    A layer called in two graphs reports the first one's tensors as its ``input`` and ``output``:
    the cuts above a final norm the tower called itself (DINOv2's) would reach back into the tower.
    """
    copy = type(layer).from_config(layer.get_config())
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def _has_class_token(tower: keras.Model) -> bool:
    return bool(tower.get_config().get("use_class_token", True))


def _prefix_tokens(tower: keras.Model) -> int:
    """Tokens before the patch tokens: the class token and any register tokens."""
    config = tower.get_config()
    return int(_has_class_token(tower)) + int(config.get("num_register_tokens") or 0)
