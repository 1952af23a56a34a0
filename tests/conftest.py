"""Shared fixtures: Hydra's compose API, tiny generated image folders, and the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from PIL import Image

from tlsweep.config import search_space_arguments
from tlsweep.paths import register_resolvers
from tlsweep.schema import job_spec
from tlsweep.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS_MINI = SHARED / "data" / "flowers-mini"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_no_top.weights.h5"

# One quick trial of pretrained MobileNetV2 on the shared flower photos (96 px, Adam at 3e-3).
FLOWERS_TRIAL = [
    "dataset=folder",
    f"dataset.path={FLOWERS_MINI}",
    "dataset.image_size=96",
    "backbone=mobilenet_v2",
    f"backbone.weights={MOBILENET_WEIGHTS}",
    "tuner.max_trials=1",
    "search.params.finetune.optimizer=adam",
    "search.params.finetune.learning_rate=3e-3",
    "verbose=false",
]

needs_shared = pytest.mark.skipif(
    not (FLOWERS_MINI.is_dir() and MOBILENET_WEIGHTS.is_file()),
    reason=f"needs the shared test assets (flower photos, MobileNetV2 weights) at {SHARED}",
)

# Small and fast: 32 px images, one epoch per stage, two trials.
FAST = [
    "dataset.image_size=32",
    "finetune.batch_size=8",
    "finetune.head_epochs=1",
    "finetune.finetune_epochs=1",
    "tuner.max_trials=2",
    "search.params.finetune.unfreeze_depth=choice(0, 3)",
    "finalists.top=0",  # the tests of finalists turn them on
    "verbose=false",
]


def make_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose tlsweep's config as ``python -m tlsweep <overrides>`` would (``search.params`` taken first)."""
    register_resolvers()
    with initialize_config_module("tlsweep.conf", version_base="1.3"):
        return compose("config", overrides=search_space_arguments(overrides or []))


def make_spec(overrides: list[str] | None = None) -> JobSpec:
    """The checked, typed spec of ``python -m tlsweep <overrides>``'s config, as a job reads it."""
    return job_spec(make_config(overrides))


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def class_image(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """An RGB image whose class is easy to learn: a bright stripe in a class-specific place."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    band = slice(label * size // 3, (label + 1) * size // 3)
    img[band, :, label % 3] = 230
    return img


def make_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 10, split: bool = True, seed: int = 0
) -> Path:
    """A folder of class sub-folders (with train/ and val/ when ``split``) of small PNG and JPEG images."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        for i in range(per_class):
            part = ("val" if i < per_class // 4 else "train") if split else ""
            ext = ".png" if i % 2 else ".jpg"
            write_image(root / part / name / f"{name}_{i}{ext}", class_image(label, rng))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def start_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """``python -m tlsweep <args>`` started in ``cwd``, still running (stdout+stderr in ``.stdout``)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tlsweep", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m tlsweep <args>`` in ``cwd``; returns the finished process (stdout+stderr in ``.stdout``)."""
    process = start_cli(args, cwd, env)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out)


def make_hub_model(path: Path, size: int = 16, seed: int = 0) -> Path:
    """A TF2 SavedModel in TF Hub's image feature-vector format, exported from a small Keras CNN with BatchNorm.

    Like the tfhub.dev models, it is called as ``model(images, training=...)`` on pixels in [0, 1], lists
    its ``variables`` bottom to top, and returns pooled features. Its six blocks by variable name
    are ``stem_conv``, ``stem_bn``, ``mid_conv``, ``mid_bn``, ``top_conv``, ``top_bn``.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for name, filters in (("stem", 4), ("mid", 6), ("top", 8)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU()(x)
    net = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    for layer in net.layers:  # BatchNorm statistics as after pretraining, so inference mode differs from training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, "float32"))

    class FeatureVector(tf.__internal__.tracking.AutoTrackable):
        def __init__(self, model: keras.Model) -> None:
            self._model = model
            self.variables = [v.value for v in model.variables]
            self.trainable_variables = [v.value for v in model.trainable_variables]

        @tf.function
        def __call__(self, images, training=False):
            return self._model(images, training=training)

    module = FeatureVector(net)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        module.__call__.get_concrete_function(spec, training=training)
    tf.saved_model.save(module, str(path))
    return path


def serve_hub(monkeypatch: pytest.MonkeyPatch, folder: Path | None, url: str) -> list[str]:
    """Fake the network under tensorflow_hub: serve ``folder`` as a tar.gz for ``url``, or fail as with no network.
    Returns the URLs asked for."""
    import io
    import tarfile
    import urllib.error

    requested: list[str] = []
    payload = io.BytesIO()
    if folder is not None:
        with tarfile.open(fileobj=payload, mode="w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)

    def urlopen(self, request):
        requested.append(getattr(request, "full_url", request))
        if folder is None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        response = io.BytesIO(payload.getvalue())
        response.headers = {}
        response.geturl = lambda: url
        return response

    monkeypatch.setattr("tensorflow_hub.resolver.HttpResolverBase._call_urlopen", urlopen)
    return requested


def make_text_hub_model(path: Path, words: tuple[str, ...], width: int = 8, seed: int = 0) -> Path:
    """A TF2 SavedModel in TF Hub's text-embedding format (as nnlm-en-dim50): a batch of strings in, one vector per
    string out, the mean of its words' embeddings (unknown words share one); variables listed, under the block
    ``embeddings``."""
    import tensorflow as tf

    class TextEmbedding(tf.__internal__.tracking.AutoTrackable):
        def __init__(self) -> None:
            keys = tf.constant(list(words))
            table = tf.lookup.KeyValueTensorInitializer(keys, tf.range(1, len(words) + 1, dtype=tf.int64))
            self.table = tf.lookup.StaticHashTable(table, default_value=0)
            rng = np.random.default_rng(seed)
            self.embeddings = tf.Variable(rng.normal(0, 1, (len(words) + 1, width)).astype("float32"),
                                          name="embeddings/part_0")  # fmt: skip
            self.variables = [self.embeddings]  # as TF Hub's reusable SavedModels list them
            self.trainable_variables = [self.embeddings]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences: tf.Tensor) -> tf.Tensor:
            tokens = tf.strings.split(tf.strings.lower(sentences))
            vectors = tf.nn.embedding_lookup(self.embeddings, self.table.lookup(tokens))
            return tf.reduce_mean(vectors, axis=1)

    module = TextEmbedding()
    tf.saved_model.save(module, str(path))
    return path


def swallow_ctrl_c() -> None:
    """Ctrl-C delivered inside a ``__del__``, as TensorFlow's objects are let go: Python raises the
    KeyboardInterrupt there, reports it as "ignored" and goes on."""

    class LetGo:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here, whichever thread the signal was delivered to

    LetGo()


def stop_when(process: subprocess.Popen, ready, sig: int = signal.SIGKILL, timeout: float = 300) -> str:
    """Send ``sig`` to ``process`` once ``ready()`` holds (checked every 0.2 s; TimeoutError after
    ``timeout``), then wait for it to end; returns its output."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.2)
    finally:
        process.send_signal(sig)
        out, _ = process.communicate(timeout=120)
    return out
