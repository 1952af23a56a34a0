"""TF Hub models in Keras 3: a SavedModel from tfhub.dev, Kaggle Models or a local folder, for any task.

``hub.KerasLayer`` is a tf_keras layer: it cannot live in a Keras 3 model, and KerasTuner rejects
tf_keras models. ``HubLayer`` loads the SavedModel with TensorFlow and tracks its variables as
Keras variables (the same variables, not copies), so Keras trains, saves and exports them like
any other layer's.

A SavedModel has no layers, so tlsweep unfreezes *blocks*: a block is the variables that share a
name scope (the variable's name without its last part, e.g. ``MobilenetV2/expanded_conv_16/project``
or ``MobilenetV2/expanded_conv_16/project/BatchNorm``), in the order the SavedModel lists them,
which is bottom to top for the tfhub.dev image models. Unfreezing the top N blocks makes their
variables trainable, BatchNorm's excepted, as for Keras backbones; the layer always runs with
``training=False``, so BatchNorm stays in inference mode.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any

import keras

from tlsweep.errors import TlsweepError, first_line

BATCHNORM_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
REMOTE_PREFIXES = ("http://", "https://", "gs://")


def cache_dir() -> Path:
    """Where downloaded hub models live: ``$TFHUB_CACHE_DIR``, else ``~/.cache/tfhub_modules``.

    tensorflow_hub's own default is the system's temporary folder, which does not survive a reboot
    and is awkward to copy to another machine.
    """
    return Path(os.environ.get("TFHUB_CACHE_DIR") or Path.home() / ".cache" / "tfhub_modules")


def is_remote(handle: str) -> bool:
    """Whether ``handle`` is a URL (downloaded once into the cache) rather than a local folder."""
    return str(handle).startswith(REMOTE_PREFIXES)


def resolve(handle: str, backbone: str = "hub") -> str:
    """A local SavedModel folder for ``handle``: the folder itself, or its copy in the hub cache.

    A URL is downloaded on first use; tensorflow_hub downloads into a temporary folder and renames
    it into place, so a cut-off download is never mistaken for a complete one.
    """
    if not is_remote(handle):
        path = Path(handle).expanduser().resolve()
        if not (path / "saved_model.pb").is_file():
            raise TlsweepError(
                f"backbone {backbone}: {path} is not a SavedModel folder (no saved_model.pb); "
                "point backbone.handle at a folder that has one, or at a tfhub.dev or Kaggle Models URL"
            )
        return str(path)
    os.environ["TFHUB_CACHE_DIR"] = str(cache_dir())
    import tensorflow_hub as hub

    try:
        return str(hub.resolve(handle))
    except urllib.error.HTTPError as e:
        raise TlsweepError(
            f"backbone {backbone}: {handle} answered HTTP {e.code} ({e.reason}); check backbone.handle"
        ) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        fetch_handle = f" backbone.handle={handle}" if backbone == "hub" else ""
        raise TlsweepError(
            f"backbone {backbone}: could not download {handle} (no network? {reason}); ways out: "
            f"run `python -m tlsweep.weights fetch backbone={backbone}{fetch_handle}` on a machine with internet "
            f"and copy {cache_dir()} here (set TFHUB_CACHE_DIR to where you put it), "
            "or set backbone.handle=path/to/saved_model_folder, "
            "or use a Keras backbone with backbone.weights=null for random init"
        ) from e


def block_of(variable_name: str) -> str:
    """The block a SavedModel variable belongs to: its name scope."""
    name = variable_name.split(":")[0]
    return name.rsplit("/", 1)[0] if "/" in name else name


def is_batchnorm(variable_name: str) -> bool:
    """BatchNorm's variables stay frozen when their block is unfrozen, as in Keras backbones."""
    return variable_name.split(":")[0].rsplit("/", 1)[-1] in BATCHNORM_VARIABLES


@keras.saving.register_keras_serializable(package="tlsweep")
class HubLayer(keras.layers.Layer):
    """A SavedModel as a Keras 3 layer whose variables Keras tracks, trains and saves."""

    def __init__(self, handle: str, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"  # the SavedModel computes in its own dtype, whatever the precision policy
        super().__init__(**kwargs)
        self.handle = handle if is_remote(handle) else str(Path(handle).expanduser().resolve())
        path = resolve(self.handle)
        import tensorflow as tf

        try:
            self._module = tf.saved_model.load(path)
        except Exception as e:
            reason = first_line(e)[:200]
            where = " (delete it and fetch it again)" if is_remote(self.handle) else ""
            raise TlsweepError(f"the SavedModel at {path} is incomplete or damaged{where}: {reason}") from e
        if not callable(self._module) or not hasattr(self._module, "variables"):
            lacks = "is not callable" if not callable(self._module) else "lists no variables"
            raise TlsweepError(
                f"the SavedModel at {path} {lacks}, so it is not a TF2 reusable SavedModel; a hub feature vector or "
                "text embedding must be callable as model(inputs) -> features and list its variables (tfhub.dev "
                "'feature_vector' models of version 4 or later, and its text embeddings, do): export one with "
                "tf.saved_model.save(obj, folder), where obj has a tf.function __call__(inputs) and the attributes "
                "variables and trainable_variables"
            )
        # The SavedModel's own variables as Keras variables (Keras wraps a tf.Variable without copying it);
        # a layer tracks the variables in a list it holds, so Keras trains, saves and exports them.
        self.hub_variables = [
            keras.Variable(v, trainable=v.trainable, name=v.name.split(":")[0].replace("/", "_"))
            for v in self._module.variables
        ]
        # By position in hub_variables: its block, and whether unfreezing may train it (not BatchNorm's,
        # nor what the SavedModel itself keeps fixed).
        self._units = [(block_of(v.name), v.trainable and not is_batchnorm(v.name)) for v in self._module.variables]
        self.built = True

    @property
    def takes(self) -> str | None:
        """What the SavedModel takes, as its call's signature says: ``texts`` (a batch of strings), ``images`` (a
        batch of pictures), or None when it keeps no signature to read."""
        import tensorflow as tf

        try:
            functions = list(self._module.__call__.concrete_functions)
        except AttributeError:  # a call restored without its traces
            functions = []
        for function in functions:
            args = function.structured_input_signature[0]
            spec = args[0] if args else None
            if isinstance(spec, tf.TensorSpec):
                return "texts" if spec.dtype == tf.string else "images" if spec.shape.rank == 4 else str(spec.dtype)
        return None

    @property
    def blocks(self) -> list[str]:
        """The SavedModel's blocks, bottom to top: the units of ``unfreeze_top``."""
        return list(dict.fromkeys(block for block, _ in self._units))

    def unfreeze_top(self, depth: int) -> int:
        """Make the variables of the top ``depth`` blocks trainable, BatchNorm's excepted; returns the block count."""
        blocks = self.blocks
        top = set(blocks[max(len(blocks) - depth, 0) :]) if depth > 0 else set()
        self.trainable = depth > 0
        for variable, (block, trainable) in zip(self.hub_variables, self._units, strict=True):
            variable.trainable = trainable and block in top
        return len(top)

    def call(self, inputs: Any) -> Any:
        try:
            return self._module(inputs, training=False)  # TF2 hub models: BatchNorm in inference mode
        except TypeError:  # a SavedModel whose call takes no training flag
            return self._module(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "handle": self.handle}
