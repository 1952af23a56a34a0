"""Image backbones: a pretrained feature extractor from its config, with its own pixel preprocessing.

A backbone config names a ``factory`` with the signature of ``keras.applications``
(``include_top``, ``weights``, ``input_shape``), a TF Hub ``handle`` (see ``tlsweep.hub``) or a
KerasHub ``preset`` (see ``presets``). Its pretrained weights are loaded once per job and kept in
memory (``tlsweep.backbone.Backbone``): fine-tuning changes a network's weights, and every trial
starts again from the pretrained ones.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import keras
import numpy as np
from hydra.utils import get_method, to_absolute_path

from tlsweep.backbone import Backbone, Inputs, units
from tlsweep.errors import TlsweepError, first_line
from tlsweep.groups import BackboneSpec

log = logging.getLogger(__name__)

BUNDLED_WEIGHTS = {"tiny": "weights/tiny.weights.h5"}  # paths inside the tlsweep package

# Per-channel (scale, offset) that map pixels 0..255 to what a backbone was trained on.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255.0
PREPROCESSING = {
    "tf": (1.0 / 127.5, -1.0),  # [-1, 1]: MobileNet, ResNet V2, Inception, Xception
    "torch": ((1.0 / _IMAGENET_STD).tolist(), (-_IMAGENET_MEAN / _IMAGENET_STD).tolist()),  # DenseNet
    "unit": (1.0 / 255.0, 0.0),  # [0, 1]: TF Hub image models
    "none": (1.0, 0.0),  # models that rescale inside (EfficientNet, ConvNeXt)
}


Rescaling = tuple[Any, Any]  # (scale, offset), each a float or one per channel


def preprocessing_layer(rescaling: Rescaling) -> keras.layers.Layer:
    """A Keras layer mapping pixels 0..255 to the backbone's expected input range."""
    scale, offset = rescaling
    return keras.layers.Rescaling(scale, offset, name="preprocessing")


def tiny_cnn(
    include_top: bool = False, weights: str | None = None, input_shape: tuple[int, int, int] = (32, 32, 3)
) -> keras.Model:
    """A small residual CNN: tlsweep's offline demo backbone (23 layers, ~230k parameters)."""
    if include_top:
        raise ValueError("tiny_cnn has no classification top")

    def conv_bn_relu(x: Any, filters: int, strides: int, name: str) -> Any:
        x = keras.layers.Conv2D(filters, 3, strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    def residual(x: Any, filters: int, name: str) -> Any:
        y = conv_bn_relu(x, filters, 1, f"{name}_a")
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_b_bn")(y)
        y = keras.layers.Add(name=f"{name}_add")([x, y])
        return keras.layers.ReLU(name=f"{name}_out")(y)

    inputs = keras.Input(input_shape, name="input")
    x = conv_bn_relu(inputs, 16, 1, "stem")
    x = conv_bn_relu(x, 32, 2, "down1")
    x = residual(x, 32, "block1")
    x = conv_bn_relu(x, 96, 2, "down2")
    x = residual(x, 96, "block2")
    model = keras.Model(inputs, x, name="tiny_cnn")
    if weights is not None:
        model.load_weights(weights)
    return model


def load_backbone(cfg: BackboneSpec, image_size: int) -> Backbone:
    """Build the image backbone ``cfg`` describes and load its weights, failing early and clearly."""
    handle, preset = cfg.handle, cfg.preset
    source = ""
    rescaling: Rescaling | None = PREPROCESSING.get(cfg.preprocessing)
    if handle:
        from tlsweep.hub import is_remote, resolve

        handle = handle if is_remote(handle) else to_absolute_path(str(handle))
        source = resolve(handle, cfg.name)  # download now, with this backbone's name in any error
        factory: Callable[..., keras.Model] = partial(hub_network, handle)
    elif preset:
        from tlsweep import kerashub
        from tlsweep.tasks.images import presets

        preset = to_absolute_path(str(preset)) if kerashub.is_local(str(preset)) else str(preset)
        folder = kerashub.resolve_preset(preset, cfg.name)
        source = str(folder)
        factory = partial(presets.preset_network, str(folder), cfg.pooling or "cls", name="backbone")
        converter = presets.preset_converter(folder)
        trained = converter.image_size if converter else None
        if trained and trained != image_size:
            log.info("backbone %s: the preset was trained at %d px, runs at %d px", cfg.name, trained, image_size)
        if cfg.preprocessing == "preset":
            rescaling = converter.rescaling if converter else None
            if rescaling is None:
                raise TlsweepError(
                    f"backbone {cfg.name}: preset {folder} has no image converter to take the preprocessing from; "
                    "set backbone.preprocessing to tf, torch, unit or none"
                )
    else:
        try:
            factory = get_method(cfg.factory)
        except Exception as e:
            raise TlsweepError(f"backbone {cfg.name}: cannot import factory '{cfg.factory}' ({e})") from e
    if rescaling is None:
        raise TlsweepError(f"backbone {cfg.name}: backbone.preprocessing=preset needs a backbone.preset")
    shape = (image_size, image_size, 3)
    weights = cfg.weights
    _check_weights_source(cfg.name, weights, handle, preset)
    # A size the architecture refuses fails before any download; a preset (downloaded already) is built once.
    net = _construct(factory, shape, cfg.name, weights="preset" if weights == "preset" else None)
    if weights == "imagenet":
        net = _download_imagenet(factory, shape, cfg.name)
        source = str(keras_weights_dir())
    elif weights not in (None, "hub", "preset"):  # a weights file: bundled with tlsweep, or the user's
        path = _bundled_weights(cfg.name) if weights == "bundled" else Path(to_absolute_path(str(weights))).expanduser()
        if not path.is_file():
            raise TlsweepError(
                f"backbone {cfg.name}: weights file {path} does not exist; "
                "fix backbone.weights, or use backbone.weights=imagenet or null"
            )
        _load_weights_file(net, path, cfg.name)
        source = str(path)
    num_layers, cuts, unit, block_tops = units(net, bool(handle))
    log.info("backbone %s: %d %s, weights %s, %d px", cfg.name, num_layers, unit, weights, image_size)
    mode = cfg.preprocessing
    about = {"image_size": image_size, "preprocessing": mode, **({"rescaling": rescaling} if mode == "preset" else {})}
    return Backbone(
        cfg.name, Inputs(shape), partial(preprocessing_layer, rescaling), partial(_construct, factory, shape, cfg.name),
        net.get_weights(), num_layers, cuts, unit, block_tops, source, about,
    )  # fmt: skip


def _check_weights_source(name: str, weights: str | None, handle: str | None, preset: str | None) -> None:
    """A hub model's weights come with its SavedModel, a preset's with the preset: say so for any other source."""
    own = "hub" if handle else "preset" if preset else None
    if weights in ("hub", "preset") and weights != own:
        needs = "backbone.handle" if weights == "hub" else "backbone.preset"
        raise TlsweepError(f"backbone {name}: backbone.weights={weights} needs a {needs}")
    if own and weights in ("bundled", "imagenet", *([None] if handle else [])):  # a preset may start random
        kind = "a hub backbone's weights come with its SavedModel" if handle else "a preset's weights come with it"
        raise TlsweepError(
            f"backbone {name}: {kind}; set backbone.weights={own} (or a weights file saved from the same backbone)"
        )


def _construct(factory: Callable[..., keras.Model], shape: tuple, name: str, weights: str | None = None) -> keras.Model:
    """The architecture (random weights, or a preset's own); a size it cannot take is a user error, not a traceback."""
    try:
        return factory(include_top=False, weights=weights, input_shape=shape)
    except ValueError as e:
        reason = first_line(e)
        raise TlsweepError(
            f"backbone {name} cannot take {shape[0]} px images ({reason}); set dataset.image_size to a size it accepts"
        ) from e


def _bundled_weights(name: str) -> Path:
    if name not in BUNDLED_WEIGHTS:
        raise TlsweepError(
            f"backbone {name} has no bundled weights; use backbone.weights=imagenet, null or a file path"
        )
    return Path(str(resources.files("tlsweep").joinpath(BUNDLED_WEIGHTS[name])))


def _load_weights_file(net: keras.Model, path: Path, name: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Keras only warns when it skips layers it cannot match
            net.load_weights(str(path))
    except Exception as e:
        reason = first_line(e)[:200]
        raise TlsweepError(
            f"backbone {name}: weights file {path} does not fit this backbone ({reason}); "
            "point backbone.weights at weights saved from the same architecture"
        ) from e


def _download_imagenet(factory: Callable[..., keras.Model], shape: tuple, name: str) -> keras.Model:
    """Keras downloads ImageNet weights on first use and caches them in $KERAS_HOME/models."""
    try:
        return factory(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as e:
        message = str(e)
        url = re.search(r"https?://[^\s:]+(?::\d+)?[^\s:]*", message)
        tried = f" from {url.group(0)}" if url else ""
        if "URL fetch failure" in message:
            problem = "no network?"
        elif "Incomplete or corrupted" in message or isinstance(e, OSError):
            problem = f"the cached or downloaded file is incomplete or corrupt: delete it from {keras_weights_dir()}"
        else:
            raise
        raise TlsweepError(
            f"backbone {name}: could not get ImageNet weights{tried} ({problem}); "
            f"ways out: run `python -m tlsweep.weights fetch backbone={name}` on a machine with internet and copy "
            f"{keras_weights_dir()} here (or set KERAS_HOME), "
            "or set backbone.weights=path/to/file.weights.h5, or backbone.weights=null for random init"
        ) from e


def keras_weights_dir() -> Path:
    """Where Keras caches downloaded application weights: ``$KERAS_HOME/models`` (``~/.keras/models``).

    Keras exports no function for its home folder, whose default also depends on whether ``~`` is
    writable, so this asks Keras' own (private) one rather than guessing; ``tests/test_backbones.py``
    fails loudly if Keras moves it.
    """
    from keras.src.backend import config

    return Path(config.keras_home()) / "models"


def hub_network(
    handle: str,
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = (224, 224, 3),
) -> keras.Model:
    """A hub image feature vector as a backbone with the signature of ``keras.applications`` (its weights are its
    own); a hub model that takes something else is refused, in one line, once it is loaded."""
    from tlsweep.hub import HubLayer

    if include_top:
        raise ValueError("hub backbones are feature extractors without a classification top")
    layer = HubLayer(handle, name="hub")
    if layer.takes not in ("images", None):
        raise TlsweepError(
            f"the TF Hub model {handle} takes {layer.takes}, not images; use it with a text dataset, or give "
            "backbone.handle an image feature-vector model"
        )
    inputs = keras.Input(input_shape, name="input")
    return keras.Model(inputs, layer(inputs), name="hub")
