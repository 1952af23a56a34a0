"""Every backbone config: its preprocessing against Keras' reference, and one training step of each architecture."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, make_config, make_spec

from tlsweep.backbone import backbone_layers
from tlsweep.model import build_classifier, compile_model, unfreeze_top
from tlsweep.tasks.images.backbones import PREPROCESSING, load_backbone, preprocessing_layer

apps = keras.applications
BACKBONES = sorted(  # image backbones (text encoders: tests/test_text.py)
    p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml") if "input: text" not in p.read_text()
)
HUB = [name for name in BACKBONES if name == "hub" or name.startswith("hub_")]
KERAS_HUB = [name for name in BACKBONES if "preset:" in (REPO / "conf" / "backbone" / f"{name}.yaml").read_text()]
KERAS = [name for name in BACKBONES if name not in HUB + KERAS_HUB and name != "tiny"]


def unit(pixels: np.ndarray) -> np.ndarray:
    return pixels / 255.0


# What each backbone's pretrained weights expect, as Keras (or TF Hub's documentation) defines it.
REFERENCE = {
    "tiny": unit,
    "mobilenet_v2": apps.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": apps.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": apps.mobilenet_v3.preprocess_input,
    "efficientnet": apps.efficientnet.preprocess_input,
    "efficientnet_v2": apps.efficientnet_v2.preprocess_input,
    "convnext": apps.convnext.preprocess_input,
    "resnet": apps.resnet_v2.preprocess_input,
    "resnet101": apps.resnet_v2.preprocess_input,
    "densenet121": apps.densenet.preprocess_input,
    "xception": apps.xception.preprocess_input,
    **{name: unit for name in HUB},  # TF Hub image models take [0, 1]
}
MIN_SIZE = {"xception": 71}


def test_every_backbone_config_has_a_reference_preprocessing() -> None:
    assert sorted(REFERENCE) == sorted(set(BACKBONES) - set(KERAS_HUB))  # a new backbone config needs its entry here


@pytest.mark.parametrize("name", KERAS_HUB)
def test_keras_hub_configs_name_a_builtin_preset_and_take_its_preprocessing(name: str) -> None:
    """Their preprocessing comes from the preset itself (tests/test_kerashub.py checks how)."""
    keras_hub = pytest.importorskip("keras_hub", reason='KerasHub backbones need pip install "tlsweep[keras-hub]"')
    cfg = make_config([f"backbone={name}"]).backbone  # the config file as it stands: keras_hub needs a preset
    assert cfg.preprocessing == "preset" and cfg.weights == "preset"
    assert cfg.preset is None if name == "keras_hub" else cfg.preset in keras_hub.models.Backbone.presets


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - set(KERAS_HUB)))
def test_backbone_preprocessing_matches_its_reference(name: str) -> None:
    cfg = make_config([f"backbone={name}"]).backbone  # the config file as it stands: hub needs a handle
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(preprocessing_layer(PREPROCESSING[cfg.preprocessing])(pixels))
    np.testing.assert_allclose(ours, REFERENCE[name](pixels.copy()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", KERAS)
def test_keras_backbone_builds_and_trains_one_step_at_its_deepest_default_depth(name: str) -> None:
    keras.utils.set_random_seed(0)  # random initial weights: the same in every run
    cfg = make_spec([f"backbone={name}", "backbone.weights=null"])
    backbone = load_backbone(cfg.backbone, MIN_SIZE.get(name, 32))
    net = backbone.build()
    if cfg.backbone.preprocessing == "none":  # the network must then rescale inside, as Keras' versions do
        first = [type(layer).__name__ for layer in backbone_layers(net)[:4]]
        assert {"Rescaling", "Normalization"} & set(first), first
    depth = max(cfg.depths(backbone.num_layers))
    assert 0 < depth <= backbone.num_layers
    model = build_classifier(backbone, 2, 0.2, None, net)
    unfreeze_top(model, backbone, depth)
    compile_model(model, keras.optimizers.SGD(0.1))
    model.run_eagerly = True  # one step: tracing a graph of hundreds of layers would take longer than running it
    unfrozen = model.get_layer("backbone").trainable_weights
    assert unfrozen and all(any(v is w for w in model.trainable_weights) for v in unfrozen)
    size = backbone.inputs.shape[0]
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    with tf.GradientTape() as tape:  # every unfrozen weight is connected to the loss (random weights may
        loss = keras.losses.sparse_categorical_crossentropy(np.array([0, 1]), model(images))  # saturate: zero is fine)
    assert all(g is not None for g in tape.gradient(loss, unfrozen))
    result = model.train_on_batch(images, np.array([0, 1]))
    assert np.isfinite(result[0] if isinstance(result, list) else result)
