"""The library versions tlsweep is built against: a test here fails loudly when one changes under it."""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner as kt

from tlsweep.tasks.images.backbones import keras_weights_dir
from tlsweep.tuners import KERAS_TUNERS, SUPPORTED_KERAS_TUNER, TUNERS, SweepTuner, quiet_keras_tuner


def test_keras_tuner_is_the_version_tlsweep_supports() -> None:
    assert kt.__version__ == SUPPORTED_KERAS_TUNER, "pyproject.toml pins keras-tuner: check tlsweep.tuners first"
    # what SweepTuner relies on: it runs each trial itself and names a trial's folder through KerasTuner
    for name, tuner in TUNERS.items():
        assert issubclass(tuner, SweepTuner) and issubclass(tuner, KERAS_TUNERS[name])
        assert tuner.run_trial is SweepTuner.run_trial, name  # no KerasTuner class overrides it first
    assert callable(kt.Tuner.get_trial_dir) and callable(kt.Tuner.search)


def test_the_keras_weights_folder_is_where_keras_downloads_to(tmp_path: Path) -> None:
    """``keras_weights_dir`` asks Keras' private ``keras_home``: if Keras moves or changes it, this fails."""
    source = tmp_path / "tlsweep-check.bin"
    source.write_bytes(b"x")
    fetched = Path(keras.utils.get_file(source.name, origin=source.as_uri(), cache_subdir="models"))
    try:
        assert fetched.parent == keras_weights_dir()
    finally:
        fetched.unlink(missing_ok=True)


def test_keras_tuners_traceback_printing_is_switched_off_where_it_lives() -> None:
    """KerasTuner prints each failed trial's traceback while ``keras_tuner.src.config.DEBUG`` is on."""
    from keras_tuner.src import config
    from keras_tuner.src.engine import base_tuner

    assert "DEBUG = True" in Path(config.__file__).read_text(), "KerasTuner's default changed: check quiet_keras_tuner"
    assert "config_module.DEBUG" in Path(base_tuner.__file__).read_text(), "KerasTuner reads another switch now"
    quiet_keras_tuner()
    assert config.DEBUG is False
