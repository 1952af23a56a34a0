"""tlsweep's race sweeper for Hydra (``hydra/sweeper=race``): successive halving over a multirun's jobs."""
