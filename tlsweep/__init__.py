"""tlsweep: hyperparameter sweeps for transfer learning with Hydra, KerasTuner and TensorBoard."""

__version__ = "0.1.0"
