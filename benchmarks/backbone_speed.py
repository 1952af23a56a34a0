"""Forward passes per second of each backbone config's architecture at its image size, side by side.

What one view of the feature cache (or one epoch of the plain way) costs per image. Weights are
random (speed does not depend on them, and KerasHub presets need no download this way): a
KerasHub config is built from its preset's architecture as KerasHub defines it.

    python benchmarks/backbone_speed.py                            # mobilenet_v2, vit, dinov2
    python benchmarks/backbone_speed.py --backbones mobilenet_v2 resnet --images 256
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tlsweep.config import compose_spec  # noqa: E402
from tlsweep.paths import register_resolvers  # noqa: E402
from tlsweep.tasks.images.backbones import load_backbone  # noqa: E402


def architecture(name: str) -> tuple[keras.Model, int]:
    """The backbone's network with random weights, and its image size."""
    register_resolvers()
    cfg = compose_spec([f"backbone={name}"]).backbone
    if not cfg.preset:
        cfg = compose_spec([f"backbone={name}", "backbone.weights=null"]).backbone
        return load_backbone(cfg, cfg.image_size).build(), cfg.image_size
    import keras_hub  # KerasHub's own architecture of the preset, as its model card gives it

    size = (cfg.image_size, cfg.image_size, 3)
    presets = {
        "vit": lambda: keras_hub.models.ViTBackbone(
            image_shape=size, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072
        ),
        "dinov2": lambda: keras_hub.models.DINOV2Backbone(
            patch_size=14, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536, image_shape=size
        ),
    }
    if name not in presets:
        raise SystemExit(f"{name}: this benchmark knows the architectures of {', '.join(presets)} among KerasHub's")
    return presets[name](), cfg.image_size


def images_per_second(model: keras.Model, size: int, images: int, batch: int) -> float:
    """Inference-mode forward passes per second over ``images`` images, after one warm-up batch."""
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    forward = tf.function(lambda x: model(x, training=False))
    forward(x)
    started = time.perf_counter()
    for _ in range(max(images // batch, 1)):
        forward(x)
    return max(images // batch, 1) * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "vit", "dinov2"])
    parser.add_argument("--images", type=int, default=128, help="images timed per backbone")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rates = {}
    for name in args.backbones:
        model, size = architecture(name)
        rates[name] = (size, images_per_second(model, size, args.images, args.batch))
    first = args.backbones[0]
    print(f"{'backbone':<14} {'px':>4} {'images/s':>9}  time per image vs {first}")
    for name, (size, rate) in rates.items():
        print(f"{name:<14} {size:>4} {rate:>9.1f}  {rates[first][1] / rate:.1f}×")


if __name__ == "__main__":
    main()
