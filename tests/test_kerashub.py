"""KerasHub backbones: tiny random presets saved with ``save_to_preset``, and a fake of the download layer.

The re-laid networks must compute what KerasHub's own models compute: if KerasHub moves a ViT's or
DINOv2's blocks, these tests fail loudly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import FAST, make_image_folder, make_spec, run_cli

from tlsweep.errors import TlsweepError

keras_hub = pytest.importorskip("keras_hub", reason='KerasHub backbones need pip install "tlsweep[keras-hub]"')

from tlsweep import kerashub  # noqa: E402
from tlsweep.model import build_classifier, trainable_part, unfreeze_top  # noqa: E402
from tlsweep.tasks.images import presets  # noqa: E402
from tlsweep.tasks.images.backbones import load_backbone  # noqa: E402

SIZE = 32


def tiny_tower(kind: str) -> keras.Model:
    """A small randomly initialised image backbone of KerasHub's ``kind`` (three blocks)."""
    keras.utils.set_random_seed(0)
    common = {"patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 16, "image_shape": (SIZE, SIZE, 3)}
    models = keras_hub.models
    if kind == "vit":
        return models.ViTBackbone(mlp_dim=32, **common)
    if kind == "dinov2":
        return models.DINOV2Backbone(intermediate_dim=32, num_register_tokens=2, **common)
    if kind == "clip":
        return models.CLIPVisionEncoder(intermediate_dim=32, **common)
    if kind == "siglip":  # as SigLIP presets are: an image tower and a text tower
        vision = models.SigLIPVisionEncoder(intermediate_dim=32, **common)
        text = models.SigLIPTextEncoder(50, 16, 16, num_layers=1, num_heads=2, intermediate_dim=32)
        return models.SigLIPBackbone(vision, text)
    return models.EfficientNetBackbone(  # a CNN: two stages of MBConv blocks
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"],
        stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0],
    )


def save_preset(folder: Path, kind: str = "vit") -> Path:
    """A preset folder as ``save_to_preset`` writes it, with an image converter mapping pixels to [-1, 1]."""
    tiny_tower(kind).save_to_preset(str(folder))
    converter = keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    converter.save_to_preset(str(folder))
    return folder


def pooled(tower: keras.Model, images: np.ndarray, pooling: str, prefix: int) -> np.ndarray:
    """What the preset's own model gives, pooled as tlsweep pools it."""
    tower = getattr(tower, "vision_encoder", tower)
    out = keras.ops.convert_to_numpy(tower(images))
    if out.ndim == 2:  # SigLIP pools with its own head
        return out
    return out[:, 0] if pooling == "cls" else out[:, prefix:].mean(axis=1)


@pytest.mark.parametrize("kind,prefix", [("vit", 1), ("dinov2", 3), ("clip", 1), ("siglip", 0)])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_relaid_network_computes_what_the_preset_computes_one_layer_per_block(
    tmp_path: Path, kind: str, prefix: int, pooling: str
) -> None:
    folder = save_preset(tmp_path / kind, kind)
    original = keras_hub.models.Backbone.from_preset(str(folder))
    net = presets.preset_network(str(folder), pooling, weights="preset", input_shape=(SIZE, SIZE, 3))
    images = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(net(images), pooled(original, images, pooling, prefix), atol=1e-5)
    assert len(kerashub.blocks_of(net)) == 3  # each block is one layer of the network: the units of depth


def test_keras_hub_backbone_unfreezes_blocks_and_caches_between_them(tmp_path: Path) -> None:
    folder = save_preset(tmp_path / "vit")
    cfg = make_spec(["backbone=keras_hub", f"backbone.preset={folder}", f"backbone.image_size={SIZE}"])
    backbone = load_backbone(cfg.backbone, SIZE)
    assert (backbone.num_layers, backbone.unit) == (3, "blocks")
    assert backbone.about["rescaling"] == pytest.approx((1 / 127.5, -1.0))  # the preset's own image converter
    # layers: stem, 3 blocks, final norm, pooling. Depth 1 trains the last block and what is above it;
    # all blocks, the stem too.
    assert [backbone.cut_depth(d) for d in range(4)] == [0, 3, 4, 6]
    model = build_classifier(backbone, 2, 0.0, None)
    unfreeze_top(model, backbone, 1)
    trained = {w.path for w in model.get_layer("backbone").trainable_weights}
    assert trained and all("transformer_block_3/" in p or p.startswith("vit_encoder/ln/") for p in trained), trained
    top = trainable_part(model, backbone.cut_depth(1))  # the cache's cut: the tokens entering the last block
    assert top.input_shape == (None, 17, 16)
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    network = model.get_layer("backbone")  # layers: input, stem, 3 blocks, norm, pooling
    below = keras.Model(network.input, network.get_layer(index=4).input)  # up to the last block
    np.testing.assert_allclose(top(below(images / 127.5 - 1.0)), model(images), atol=1e-5)


def test_the_cache_cuts_between_dinov2_blocks_inside_this_network_only(tmp_path: Path) -> None:
    """DINOv2's final norm is called in KerasHub's own graph too: the cut must not reach back into it."""
    folder = save_preset(tmp_path / "dinov2", "dinov2")
    cfg = make_spec(["backbone=keras_hub", f"backbone.preset={folder}"])
    backbone = load_backbone(cfg.backbone, SIZE)
    model = build_classifier(backbone, 2, 0.0, None)
    top = trainable_part(model, backbone.cut_depth(2))  # the tokens entering the second-to-last block
    network = model.get_layer("backbone")  # layers: input, stem, 3 blocks, norm, pooling
    below = keras.Model(network.input, network.get_layer(index=3).input)
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(top(below(images / 127.5 - 1.0)), model(images), atol=1e-5)


def test_a_keras_hub_cnn_unfreezes_by_layers_at_any_size(tmp_path: Path) -> None:
    folder = save_preset(tmp_path / "efficientnet", "efficientnet")
    cfg = make_spec(["backbone=keras_hub", f"backbone.preset={folder}"])
    backbone = load_backbone(cfg.backbone, 48)
    network = backbone.build()
    assert backbone.unit == "layers" and backbone.num_layers == len(network.layers) - 1  # its input excluded
    assert backbone.cut_depth(5) == 5 and network.output_shape == (None, 12, 12, 1280)  # the head averages it


def test_classifier_with_a_keras_hub_backbone_saves_and_loads(tmp_path: Path) -> None:
    folder = save_preset(tmp_path / "dinov2", "dinov2")
    cfg = make_spec(["backbone=keras_hub", f"backbone.preset={folder}", "backbone.pooling=mean"])
    backbone = load_backbone(cfg.backbone, 48)  # DINOv2 interpolates its position embeddings to any size
    model = build_classifier(backbone, 3, 0.0, None)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    images = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)


def test_a_size_the_preset_cannot_take_is_one_line(tmp_path: Path) -> None:
    folder = save_preset(tmp_path / "vit")
    cfg = make_spec(["backbone=keras_hub", f"backbone.preset={folder}"])
    with pytest.raises(TlsweepError, match=r"cannot take 64 px images \(its weights were trained for 32 px"):
        load_backbone(cfg.backbone, 64)


class FakeKaggle:
    """kagglehub's download, served from local folders: the network layer and nothing else."""

    def __init__(self, remote: Path, cache: Path) -> None:
        self.remote, self.cache, self.calls = remote, cache, []

    def model_download(self, handle: str) -> str:
        self.calls.append(handle)
        source, target = self.remote / handle, self.cache / "models" / handle
        if not source.is_dir():
            raise FileNotFoundError(f"404 Client Error: {handle}")
        if not target.is_dir():
            shutil.copytree(source, target)
        return str(target)


def test_a_remote_preset_downloads_once_and_builtin_names_map_to_their_handle(tmp_path, monkeypatch) -> None:
    import kagglehub

    handle = "keras/vit/keras/vit_base_patch16_224_imagenet/4"  # what KerasHub maps the built-in name to
    save_preset(tmp_path / "remote" / handle)
    fake = FakeKaggle(tmp_path / "remote", tmp_path / "cache")
    monkeypatch.setattr(kagglehub, "model_download", fake.model_download)
    folder = kerashub.resolve_preset("vit_base_patch16_224_imagenet", "vit")
    assert fake.calls == [handle] and (folder / "model.weights.h5").is_file()
    assert kerashub.resolve_preset(f"kaggle://{handle}", "vit") == folder


def test_no_network_for_a_preset_is_one_line_with_the_ways_out(tmp_path, monkeypatch) -> None:
    import kagglehub
    import requests

    def offline(handle: str) -> str:
        raise requests.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TlsweepError) as caught:
        kerashub.resolve_preset("dinov2_small", "dinov2")
    message = str(caught.value)
    assert "\n" not in message and "could not download KerasHub preset dinov2_small (no network?" in message
    assert "python -m tlsweep.weights fetch backbone=dinov2" in message and str(tmp_path / "cache") in message


@pytest.mark.parametrize(
    "status,message", [(404, r"it does not exist there \(HTTP 404\)"), (403, r"the hub refused it \(HTTP 403\)")]
)
def test_a_missing_or_gated_preset_is_one_line_saying_which(monkeypatch, status: int, message: str) -> None:
    import kagglehub
    import requests

    def refuse(handle: str) -> str:
        response = requests.Response()
        response.status_code = status
        raise requests.HTTPError(f"{status} Client Error", response=response)

    monkeypatch.setattr(kagglehub, "model_download", refuse)
    with pytest.raises(TlsweepError, match=message):
        kerashub.resolve_preset("kaggle://someone/vit/keras/private/1", "keras_hub")


@pytest.mark.parametrize(
    "preset,message",
    [("no_such_preset", "unknown KerasHub preset 'no_such_preset'"), ("./missing", "is not a KerasHub preset folder")],
)
def test_bad_presets_are_one_line(preset: str, message: str) -> None:
    with pytest.raises(TlsweepError, match=message):
        kerashub.resolve_preset(preset, "keras_hub")


def test_without_keras_hub_installed_the_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "keras_hub", None)  # as if it were not installed
    with pytest.raises(TlsweepError, match=r'pip install "tlsweep\[keras-hub\]"'):
        kerashub.resolve_preset("dinov2_small", "dinov2")


def test_multirun_sweeps_a_keras_hub_preset_and_a_keras_backbone_with_the_cache(tmp_path: Path) -> None:
    """Both stages of both jobs train on cached tensors, the winner is exported and predicts."""
    images = make_image_folder(tmp_path / "images")
    preset = save_preset(tmp_path / "presets" / "tinyvit")
    configs = tmp_path / "configs" / "backbone"
    configs.mkdir(parents=True)
    (configs / "tinyvit.yaml").write_text(
        "name: tinyvit\n"
        f"preset: {preset}\n"
        "weights: preset\n"
        f"image_size: {SIZE}\n"
        "preprocessing: preset\n"
        "unfreeze_depths: [0, 1]\n"
    )
    args = ["-m", f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "backbone=tiny,tinyvit"]
    args += [
        "dataset=folder",
        f"dataset.path={images}",
        *FAST,
        "search.params.finetune.unfreeze_depth=1",
        "tuner.max_trials=1",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "backbone tinyvit: 3 blocks" in result.stdout and "cuts at depth 1, 0:" in result.stdout
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    vit_job = sweep / "backbone=tinyvit"
    record = json.loads(next((vit_job / "trials").glob("trial_*.json")).read_text())
    assert record["status"] == "completed" and record["hyperparameters"]["finetune.unfreeze_depth"] == 1
    assert [epoch["stage"] for epoch in record["history"]] == ["head", "finetune"]  # both stages trained
    for job in ("backbone=tiny", "backbone=tinyvit"):
        assert json.loads((sweep / job / "job.json").read_text())["status"] == "completed"
        log = (sweep / job / "tlsweep.log").read_text()
        assert "feature cache: train, cuts at depth" in log and "4 parts computed" in log  # both stages' cuts
    # The KerasHub job's winner exports and predicts in fresh processes, as a user runs them.
    exported = python_m("tlsweep.export", str(vit_job), cwd=tmp_path)
    assert exported.returncode == 0 and (vit_job / "best" / "model.keras").is_file(), exported.stdout
    for fmt in ("keras", "saved_model"):
        args = [str(vit_job / "best"), str(images / "val"), "--format", fmt]
        predicted = python_m("tlsweep.predict", *args, cwd=tmp_path)
        lines = [line for line in predicted.stdout.splitlines() if re.search(r"\.(jpg|png): \w+ [01]\.\d{3}", line)]
        assert predicted.returncode == 0 and len(lines) == 6, predicted.stdout  # each image: its top class


def python_m(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in a fresh process (stdout and stderr together)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_weights_fetch_and_list_know_presets(tmp_path: Path) -> None:
    preset = save_preset(tmp_path / "cache" / "models" / "keras" / "vit" / "keras" / "tiny" / "1")
    env = {"KAGGLEHUB_CACHE": str(tmp_path / "cache"), "KERAS_HOME": str(tmp_path / "keras")}

    def weights(*args: str) -> subprocess.CompletedProcess:
        return python_m("tlsweep.weights", *args, cwd=tmp_path, env=env)

    fetched = weights("fetch", "backbone=keras_hub", f"backbone.preset={preset}", f"backbone.image_size={SIZE}")
    assert fetched.returncode == 0 and f"ready    keras_hub at {SIZE} px: {preset}" in fetched.stdout, fetched
    listed = weights("list")
    assert listed.returncode == 0, listed
    assert "KerasHub presets in" in listed.stdout and "keras/vit/keras/tiny/1" in listed.stdout, listed.stdout


def test_a_run_without_network_stops_in_one_line_naming_the_preset(tmp_path: Path) -> None:
    """The real download path, with every connection refused: no traceback, the way out, the job failed."""
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env = {**offline, "KAGGLEHUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = run_cli(["backbone=dinov2", *FAST], tmp_path, env=env)
    lines = [line for line in result.stdout.splitlines() if "could not download KerasHub preset dinov2_small" in line]
    assert result.returncode == 1 and lines and lines[0].startswith("error: "), result.stdout
    assert "Traceback" not in result.stdout and "python -m tlsweep.weights fetch backbone=dinov2" in lines[0]
