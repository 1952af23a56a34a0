"""tlsweep's Hydra configs; installed as the package ``tlsweep.conf`` so ``pip install .`` ships them."""
