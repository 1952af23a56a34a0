"""KerasHub presets, for any task: resolved and downloaded once, and a network's transformer blocks found.

A preset is a built-in name (``dinov2_small``, ``bert_tiny_en_uncased``), a Kaggle handle
(``kaggle://keras/vit/keras/...``), a Hugging Face handle (``hf://...``) or a local folder made by
``save_to_preset``. It is resolved to a local folder once per job (downloads are cached by kagglehub
in ``$KAGGLEHUB_CACHE``), so the networks a job builds never touch the network. Each task lays its
presets out as networks whose blocks are their layers (``tlsweep.tasks.images.presets``, the image
towers; ``tlsweep.tasks.text.encoders``, the text encoders): unfreeze depth counts transformer
blocks, and the feature cache cuts between them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras

from tlsweep.errors import TlsweepError, first_line

REMOTE_SCHEMES = ("kaggle://", "hf://")
INSTALL_HINT = 'pip install "tlsweep[keras-hub]" (Python 3.11 or newer)'


def keras_hub() -> Any:
    """The keras_hub module, or one line saying how to install it (it is an optional extra)."""
    try:
        import keras_hub as module
    except ImportError as e:
        raise TlsweepError(f"KerasHub backbones need the keras-hub package ({first_line(e)}); {INSTALL_HINT}") from e
    return module


def cache_dir() -> Path:
    """Where downloaded presets live: ``$KAGGLEHUB_CACHE``, else ``~/.cache/kagglehub`` (kagglehub's own)."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")


def is_local(preset: str) -> bool:
    """Whether ``preset`` names a folder: a path, not a built-in name (which has no slash) or a handle."""
    return "://" not in preset and ("/" in preset or preset.startswith((".", "~")))


def resolve_preset(preset: str, backbone: str) -> Path:
    """The local folder of ``preset``, downloading it whole on first use; one line for any failure."""
    if is_local(preset):
        folder = Path(preset).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise TlsweepError(
                f"backbone {backbone}: {folder} is not a KerasHub preset folder (no config.json); point "
                "backbone.preset at a folder saved with save_to_preset, a built-in preset name or a kaggle:// handle"
            )
        return folder
    hub = keras_hub()
    handle = str(preset)
    if "://" not in handle:
        builtin = hub.models.Backbone.presets
        if handle not in builtin:
            raise TlsweepError(
                f"backbone {backbone}: unknown KerasHub preset '{handle}'; use a built-in name "
                "(keras_hub.models.Backbone.presets lists them), a kaggle:// or hf:// handle, or a preset folder"
            )
        handle = builtin[handle]["kaggle_handle"]
    try:
        return _download(handle)
    except Exception as e:  # whatever the hub's client library raises: one line, by what it means
        raise TlsweepError(_download_problem(e, str(preset), backbone)) from e


def _download_problem(error: Exception, preset: str, backbone: str) -> str:
    """One line for a failed download: not there, not allowed, or no network (with the ways out)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    start = f"backbone {backbone}: could not download KerasHub preset {preset}"
    if status == 404:
        return f"{start}: it does not exist there (HTTP 404); check backbone.preset against the hub's model page"
    if status in (401, 403):
        return (
            f"{start}: the hub refused it (HTTP {status}); the model may need you to accept its terms on its "
            "model page, and credentials (kagglehub.login(), or KAGGLE_USERNAME and KAGGLE_KEY)"
        )
    if not isinstance(error, OSError):
        return f"{start} ({type(error).__name__}: {first_line(error)[:160]})"
    fetch = f"backbone={backbone}" + (f" backbone.preset={preset}" if backbone == "keras_hub" else "")
    return (
        f"{start} (no network? {first_line(error)[:160]}); ways out: run `python -m tlsweep.weights fetch {fetch}` "
        f"on a machine with internet and copy {cache_dir()} here (set KAGGLEHUB_CACHE to where you put it), "
        "or set backbone.preset=path/to/folder"
    )


def _download(handle: str) -> Path:
    """Download a whole preset with the hub's client library: the network layer, and all of it."""
    os.environ.setdefault("KAGGLEHUB_CACHE", str(cache_dir()))
    if handle.startswith("hf://"):
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(handle.removeprefix("hf://")))
    import kagglehub

    return Path(kagglehub.model_download(handle.removeprefix("kaggle://")))


@keras.saving.register_keras_serializable(package="tlsweep")
class TokenPooling(keras.layers.Layer):
    """A transformer's token sequence as one vector: the class token, or the mean of the patch tokens."""

    def __init__(self, mode: str = "cls", prefix_tokens: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode, self.prefix_tokens = mode, prefix_tokens

    def call(self, tokens: Any) -> Any:
        if self.mode == "cls":
            return tokens[:, 0]
        return keras.ops.mean(tokens[:, self.prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode, "prefix_tokens": self.prefix_tokens}


def blocks_of(network: keras.Model) -> list[int]:
    """The positions (among the network's layers, input excluded) of its transformer blocks, bottom to top."""
    layers = [layer for layer in network.layers if not isinstance(layer, keras.layers.InputLayer)]
    kinds = [type(layer).__name__ for layer in layers]
    block_kinds = {"ViTEncoderBlock", "DINOV2Layer", "SigLIPEncoderLayer", "CLIPEncoderLayer", "TransformerEncoder"}
    return [i for i, kind in enumerate(kinds) if kind in block_kinds]
