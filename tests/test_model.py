"""Backbones, preprocessing, the classifier's frozen and trainable parts, and the two-stage bookkeeping."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import make_spec

from tlsweep.backbone import backbone_layers
from tlsweep.errors import TlsweepError
from tlsweep.groups import TrainingSpec
from tlsweep.model import build_classifier, unfreeze_top
from tlsweep.objective import Objective
from tlsweep.tasks.images import IMAGES
from tlsweep.tasks.images.augment import warp
from tlsweep.tasks.images.backbones import load_backbone, tiny_cnn
from tlsweep.trial import BestWeights


def backbone_cfg(*overrides: str):
    return make_spec(list(overrides)).backbone


def test_bundled_tiny_backbone_is_pretrained() -> None:
    pretrained = load_backbone(backbone_cfg(), 32)
    random_init = load_backbone(backbone_cfg("backbone.weights=null"), 32)
    assert pretrained.num_layers == 23
    first = pretrained.build().get_layer("stem_conv").get_weights()[0]
    assert not np.allclose(first, random_init.build().get_layer("stem_conv").get_weights()[0])
    np.testing.assert_array_equal(first, pretrained.build().get_layer("stem_conv").get_weights()[0])


def test_weights_from_a_file(tmp_path: Path) -> None:
    source = tiny_cnn(input_shape=(32, 32, 3))
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    backbone = load_backbone(backbone_cfg(f"backbone.weights={path}"), 32)
    np.testing.assert_array_equal(backbone.build().get_weights()[0], source.get_weights()[0])


def test_missing_or_mismatched_weights_file(tmp_path: Path) -> None:
    with pytest.raises(TlsweepError, match="does not exist"):
        load_backbone(backbone_cfg(f"backbone.weights={tmp_path / 'nope.weights.h5'}"), 32)
    wrong = tmp_path / "wrong.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(wrong)
    with pytest.raises(TlsweepError, match="does not fit this backbone"):
        load_backbone(backbone_cfg(f"backbone.weights={wrong}"), 32)


def test_imagenet_weights_without_network_say_the_ways_out(tmp_path: Path, monkeypatch) -> None:
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(tmp_path))  # an empty cache
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", no_network)
    with pytest.raises(TlsweepError) as info:
        load_backbone(backbone_cfg("backbone=mobilenet_v2"), 96)
    message = str(info.value)
    assert "https://storage.googleapis.com/" in message and "mobilenet_v2" in message
    assert "backbone.weights=path/to/file.weights.h5" in message and "backbone.weights=null" in message
    assert "\n" not in message


def test_corrupt_imagenet_download_is_reported_not_loaded(tmp_path: Path, monkeypatch) -> None:
    def truncated_download(url, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")

    monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(tmp_path))
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", truncated_download)
    with pytest.raises(TlsweepError, match="incomplete or corrupt: delete it from"):
        load_backbone(backbone_cfg("backbone=mobilenet_v2"), 96)
    with pytest.raises(TlsweepError, match="incomplete or corrupt"):  # and again, now from the cache
        load_backbone(backbone_cfg("backbone=mobilenet_v2"), 96)


TINY = load_backbone(backbone_cfg("backbone.weights=null"), 32)


def classifier(depth_layers: int = 0, augment=None) -> keras.Model:
    return build_classifier(TINY, 3, 0.2, augment)


def test_classifier_has_named_frozen_and_trainable_parts() -> None:
    model = classifier()
    assert [layer.name for layer in model.layers] == ["image", "preprocessing", "backbone", "head"]
    assert not model.get_layer("backbone").trainable
    trainable = {v.path for v in model.trainable_variables}
    assert trainable and all(p.startswith("head/") or "classifier" in p for p in trainable)


def test_unfreeze_top_keeps_batchnorm_frozen() -> None:
    model = classifier()
    unfreeze_top(model, TINY, 5)
    layers = backbone_layers(model.get_layer("backbone"))
    top = layers[-5:]
    assert [layer.trainable for layer in layers[:-5]] == [False] * (len(layers) - 5)
    for layer in top:
        assert layer.trainable == (not isinstance(layer, keras.layers.BatchNormalization))
    assert unfreeze_top(model, TINY, 0) == 0 and not model.get_layer("backbone").trainable


def test_unfrozen_backbone_keeps_batchnorm_statistics_in_training() -> None:
    model = classifier()
    unfreeze_top(model, TINY, 23)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    bn = model.get_layer("backbone").get_layer("block2_b_bn")
    before = [w.copy() for w in bn.get_weights()]
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.fit(x, np.zeros(8, "int32"), epochs=1, verbose=0)
    for old, new in zip(before, bn.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # gamma, beta frozen; moving stats untouched
    conv = model.get_layer("backbone").get_layer("block2_b_conv")
    assert conv.trainable


def test_standard_augmentation_keeps_the_input_size() -> None:
    aug = IMAGES.augmentation(make_spec(["augmentation=standard"]).augmentation, seed=0)
    x = np.full((2, 32, 32, 3), 128.0, "float32")
    assert tuple(aug(x, training=True).shape) == (2, 32, 32, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(aug(x, training=False)), x)
    assert IMAGES.augmentation(make_spec(["augmentation=none"]).augmentation, seed=0) is None


def test_one_warp_rotates_scales_and_mirrors_about_the_centre() -> None:
    images = np.random.default_rng(0).random((1, 7, 7, 3), "float32")
    one = np.ones(1, "float32")

    def warped(angle: float = 0.0, scale: float = 1.0, flip: float = 1.0) -> np.ndarray:
        out = warp(images, np.full(1, angle, "float32"), (one * scale, one * scale), (one * flip, one))
        return keras.ops.convert_to_numpy(out)[0]

    np.testing.assert_allclose(warped(), images[0], atol=1e-5)
    np.testing.assert_allclose(warped(angle=np.pi / 2), np.rot90(images[0]), atol=1e-5)  # a quarter turn
    np.testing.assert_allclose(warped(flip=-1.0), images[0, :, ::-1], atol=1e-5)
    zoomed_in = warped(scale=0.5)
    np.testing.assert_allclose(zoomed_in[3, 3], images[0, 3, 3], atol=1e-5)  # the centre stays put
    np.testing.assert_allclose(zoomed_in[3, 5], images[0, 3, 4], atol=1e-5)  # two pixels out read one


def test_flips_alone_move_whole_pixels_and_differ_per_image() -> None:
    aug = IMAGES.augmentation(make_spec(["augmentation=light"]).augmentation, seed=0)
    images = np.random.default_rng(0).random((32, 8, 8, 3), "float32")
    out = keras.ops.convert_to_numpy(aug(images, training=True))
    flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images, strict=True)]
    kept = [np.array_equal(o, x) for o, x in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 4 < sum(flipped) < 28  # about one in two


def test_augmentation_draws_differ_per_image_and_repeat_with_the_seed() -> None:
    cfg = make_spec(["augmentation=standard"]).augmentation
    images = np.random.default_rng(0).random((8, 16, 16, 3), "float32")
    first = keras.ops.convert_to_numpy(IMAGES.augmentation(cfg, seed=3)(images, training=True))
    again = keras.ops.convert_to_numpy(IMAGES.augmentation(cfg, seed=3)(images, training=True))
    other = keras.ops.convert_to_numpy(IMAGES.augmentation(cfg, seed=4)(images, training=True))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert len({round(float(np.abs(o - x).mean()), 6) for o, x in zip(first, images, strict=True)}) == 8


@pytest.mark.parametrize(
    "args,plan",
    [
        ((3, 3), [("head", 0, 3), ("finetune", 3, 6)]),
        ((3, 0), [("head", 0, 3)]),
        ((3, 3, 2), [("head", 0, 1), ("finetune", 1, 2)]),  # a Hyperband budget, split 1:1
        ((3, 3, 6, 2), [("head", 2, 3), ("finetune", 3, 6)]),  # Hyperband continues a trial
        ((2, 4, 9, 3), [("finetune", 3, 9)]),
    ],
)
def test_stage_plan_puts_both_stages_on_one_epoch_axis(args, plan) -> None:
    head, finetune, *budget = args
    assert TrainingSpec("top", head, finetune).plan(*budget) == plan


class _Scripted(keras.callbacks.Callback):
    """Feeds BestWeights a scripted validation accuracy and changes the weights every epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = iter(scores)

    def on_epoch_end(self, epoch, logs):
        for v in self.model.trainable_variables:
            v.assign(v + 1.0)
        logs["val_accuracy"] = next(self.scores)


def _run_stage(model, best, stage, scores):
    best.stage = stage
    best.set_model(model)
    best.on_train_begin()
    script = _Scripted(scores)
    script.set_model(model)
    for epoch, _ in enumerate(scores):
        logs = {"loss": 1.0}
        script.on_epoch_end(epoch, logs)
        best.on_epoch_end(epoch, logs)
    best.on_train_end()


def test_best_weights_restores_the_best_epoch_and_rolls_back_a_worse_stage_2() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    best = BestWeights(Objective("val_accuracy"))
    _run_stage(model, best, "head", [0.5, 0.8, 0.6])
    assert best.best["epoch"] == 2 and float(model.weights[0].numpy()[0, 0]) == 2.0
    _run_stage(model, best, "finetune", [0.7, 0.75])
    assert best.rolled_back and float(model.weights[0].numpy()[0, 0]) == 2.0
    assert best.stage_bests["finetune"]["value"] == 0.75


def test_best_weights_keeps_a_better_stage_2() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    best = BestWeights(Objective("val_accuracy"))
    _run_stage(model, best, "head", [0.5])
    _run_stage(model, best, "finetune", [0.6, 0.9, 0.7])
    assert not best.rolled_back and best.best["stage"] == "finetune"
    assert float(model.weights[0].numpy()[0, 0]) == 3.0


def test_best_weights_stops_a_diverging_stage() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = BestWeights(Objective("val_accuracy"))
    best.set_model(model)
    best.on_train_begin()
    best.on_epoch_end(0, {"loss": 0.5, "val_accuracy": 0.5})
    best.on_epoch_end(1, {"loss": float("nan"), "val_accuracy": 0.9})
    assert best.diverged_at == 2 and model.stop_training
