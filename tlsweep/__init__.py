"""tlsweep: hyperparameter sweeps for transfer learning with Hydra, KerasTuner and TensorBoard."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_tuner(job_dir: Any) -> Any:
    """A job's KerasTuner project reloaded with the job's tuner and objective (see ``tlsweep.tuners.load_tuner``)."""
    from tlsweep.tuners import load_tuner as load  # imports TensorFlow: only when asked for

    return load(job_dir)
