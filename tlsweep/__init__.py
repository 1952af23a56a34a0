"""tlsweep: hyperparameter sweeps for transfer learning with Hydra, KerasTuner and TensorBoard.

From Python: ``tlsweep.sweep([...overrides])`` runs what ``python -m tlsweep`` runs and returns a ``Result``;
``tlsweep.load(folder)`` reads one already on disk.
"""

from __future__ import annotations

from typing import Any

from tlsweep.api import Answer, Result, SweepError, load, sweep
from tlsweep.errors import TlsweepError

__version__ = "0.1.0"
__all__ = ["Answer", "Result", "SweepError", "TlsweepError", "load", "load_tuner", "sweep"]


def load_tuner(job_dir: Any) -> Any:
    """A job's KerasTuner project reloaded with the job's tuner and objective (see ``tlsweep.tuners.load_tuner``)."""
    from tlsweep.tuners import load_tuner as load  # imports TensorFlow: only when asked for

    return load(job_dir)
