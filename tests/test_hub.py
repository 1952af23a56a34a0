"""TF Hub backbones in Keras 3: frozen and unfrozen blocks, BatchNorm, saving, downloads and the offline paths."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import FAST, make_hub_model, make_spec, run_cli, serve_hub

from tlsweep import weights
from tlsweep.backbone import Backbone
from tlsweep.errors import TlsweepError
from tlsweep.model import build_classifier, compile_model, unfreeze_top
from tlsweep.predict import load_predictor
from tlsweep.tasks.images.backbones import load_backbone

URL = "https://tfhub.dev/example/feature_vector/1"


pytestmark = pytest.mark.xdist_group("test_hub")  # its tests share a module-scoped fixture: one worker


@pytest.fixture(scope="module")
def hub_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub_model(tmp_path_factory.mktemp("hub") / "feature_vector")


def hub_classifier(handle: str | Path) -> tuple[keras.Model, Backbone]:
    cfg = make_spec(["backbone=hub", f"backbone.handle={handle}"])
    backbone = load_backbone(cfg.backbone, 16)
    return build_classifier(backbone, 3, 0.0, None), backbone


def batch(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32"), rng.integers(0, 3, n)


def changed(model: keras.Model, backbone: Backbone, depth: int | None) -> set[str]:
    """Names of the hub variables one training step changes (stage 1 when ``depth`` is None)."""
    if depth is not None:
        unfreeze_top(model, backbone, depth)
    compile_model(model, keras.optimizers.SGD(0.5))
    hub = model.get_layer("backbone").get_layer("hub")
    before = {v.name: v.numpy().copy() for v in hub.weights}
    model.fit(*batch(), epochs=1, verbose=0)
    return {v.name for v in hub.weights if not np.array_equal(before[v.name], v.numpy())}


def test_hub_backbone_counts_blocks_by_variable_name(hub_model: Path) -> None:
    backbone = load_backbone(make_spec(["backbone=hub", f"backbone.handle={hub_model}"]).backbone, 16)
    hub = backbone.build().get_layer("hub")
    assert hub.blocks == ["stem_conv", "stem_bn", "mid_conv", "mid_bn", "top_conv", "top_bn"]
    assert backbone.num_layers == 6


def test_stage_1_keeps_the_hub_backbone_frozen(hub_model: Path) -> None:
    model, backbone = hub_classifier(hub_model)
    head_before = model.get_layer("head").get_weights()[0].copy()
    assert changed(model, backbone, None) == set()
    assert not np.array_equal(head_before, model.get_layer("head").get_weights()[0])


@pytest.mark.parametrize(
    "depth,trained",
    [
        (2, {"top_conv_kernel", "top_conv_bias"}),  # top_bn, top_conv: BatchNorm stays frozen
        (4, {"mid_conv_kernel", "mid_conv_bias", "top_conv_kernel", "top_conv_bias"}),
    ],
)
def test_stage_2_trains_exactly_the_top_blocks_with_batchnorm_in_inference_mode(
    hub_model: Path, depth: int, trained: set[str]
) -> None:
    model, backbone = hub_classifier(hub_model)
    assert changed(model, backbone, depth) == trained  # moving statistics, gamma and beta untouched
    images, _ = batch(4)
    np.testing.assert_allclose(model(images, training=True), model(images, training=False), rtol=1e-6)


def test_best_model_with_a_hub_backbone_saves_and_reloads(hub_model: Path, tmp_path: Path) -> None:
    model, backbone = hub_classifier(hub_model)
    changed(model, backbone, 4)
    model.save(tmp_path / "best.keras")
    reloaded = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    images, _ = batch(4)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


def serve(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> list[str]:
    return serve_hub(monkeypatch, folder, URL)


def test_a_hub_url_downloads_once_then_works_offline(hub_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    requested = serve(monkeypatch, hub_model)
    lines, errors = weights.fetch(["backbone=hub", f"backbone.handle={URL}", "dataset.image_size=16"])
    assert not errors and len(requested) == 1 and URL in requested[0]
    assert "ready    hub at 16 px" in lines[0]

    serve(monkeypatch, None)  # now offline: the cached copy is used
    expected = keras.Model(*_reference(hub_model)).predict(batch(2)[0] / 255.0, verbose=0)
    backbone = load_backbone(make_spec(["backbone=hub", f"backbone.handle={URL}"]).backbone, 16)
    np.testing.assert_allclose(backbone.build().predict(batch(2)[0] / 255.0, verbose=0), expected, rtol=1e-5)

    listing = "\n".join(weights.cached())
    assert URL in listing and "KB" in listing and "INCOMPLETE" not in listing


def _reference(path: Path) -> tuple:
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="__call__")
    inputs = keras.Input((16, 16, 3))
    return inputs, layer(inputs)


def test_no_network_names_the_backbone_the_url_and_the_ways_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty_cache"))
    serve(monkeypatch, None)
    with pytest.raises(TlsweepError) as info:
        load_backbone(make_spec(["backbone=hub_resnet"]).backbone, 224)
    message = str(info.value)
    assert "hub_resnet" in message and "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/4" in message
    assert "python -m tlsweep.weights fetch backbone=hub_resnet" in message
    assert "backbone.handle=path/to/saved_model_folder" in message and "backbone.weights=null" in message
    assert "\n" not in message


def test_a_damaged_cached_download_is_reported_not_loaded(hub_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    serve(monkeypatch, hub_model)
    cfg = make_spec(["backbone=hub", f"backbone.handle={URL}"]).backbone
    load_backbone(cfg, 16)
    for index in (tmp_path / "hub_cache").rglob("variables.index"):
        index.write_bytes(b"cut off")
    serve(monkeypatch, None)
    with pytest.raises(TlsweepError, match="incomplete or damaged \\(delete it and fetch it again\\)"):
        load_backbone(cfg, 16)


def test_a_local_folder_that_is_not_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(TlsweepError, match="is not a SavedModel folder"):
        load_backbone(make_spec(["backbone=hub", f"backbone.handle={tmp_path}"]).backbone, 16)


def test_a_saved_model_that_is_not_a_reusable_feature_vector_is_one_line(tmp_path: Path) -> None:
    import tensorflow as tf

    class Holder(tf.Module):  # a Keras model kept inside a plain tf.Module: saved without a variables list
        def __init__(self) -> None:
            super().__init__()
            layers = [keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()]
            self.model = keras.Sequential([keras.Input((16, 16, 3)), *layers])

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def __call__(self, images):
            return self.model(images)

    tf.saved_model.save(Holder(), str(tmp_path / "holder"))
    with pytest.raises(TlsweepError) as info:
        load_backbone(make_spec(["backbone=hub", f"backbone.handle={tmp_path / 'holder'}"]).backbone, 16)
    message = str(info.value)
    assert "not a TF2 reusable SavedModel" in message and "tf.saved_model.save" in message
    assert "variables and trainable_variables" in message and "\n" not in message


@pytest.mark.slow
def test_hub_sweep_records_the_offline_job_and_finishes_the_other(hub_model: Path, tmp_path: Path) -> None:
    offline = "https://127.0.0.1:9/feature_vector/1"  # nothing listens there: the download fails as without network
    result = run_cli(
        [
            "-m",
            "backbone=hub",
            f"backbone.handle={offline},{hub_model}",
            *FAST,
            "search.params.finetune.unfreeze_depth=4",
        ],
        tmp_path,
        env={"TFHUB_CACHE_DIR": str(tmp_path / "hub_cache")},
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: backbone hub: could not download {offline} (no network?" in result.stdout
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    records = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    assert sorted(r["status"] for r in records) == ["completed", "failed"]
    done = next(r for r in records if r["status"] == "completed")
    assert done["best"]["hyperparameters"]["finetune.unfreeze_depth"] == 4 and done["completed_trials"] == 2
    predictor = load_predictor(sweep / "best")  # stage 2 through the hub layer, exported as for serving
    assert predictor(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 5)
    assert "could not download" in (sweep / "report.md").read_text()
