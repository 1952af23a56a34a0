"""Seconds to augment a training set: tlsweep's one warp per image against Keras' layers one by one.

``augmentation=standard`` (flip, rotation, zoom, stretch) as ``tlsweep.tasks.images.augment.RandomAffine`` and as
the classic chain of Keras layers (RandomFlip → RandomRotation → RandomZoom → RandomZoom per axis),
on the same random 8-bit images in batches of 64, each way traced once, run alternately ``--repeats``
times. What a plain-way epoch and each view of the feature cache spend on augmentation.

    python benchmarks/augmentation.py [--images 2416] [--size 160]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tlsweep.config import compose_spec  # noqa: E402
from tlsweep.paths import register_resolvers  # noqa: E402
from tlsweep.tasks.images import IMAGES  # noqa: E402

BATCH = 64


def keras_chain(cfg, seed: int) -> keras.Sequential:
    """The same recipe as Keras' own layers, each resampling the image."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip(cfg.flip, seed=seed),
            keras.layers.RandomRotation(cfg.rotation, seed=seed + 1),
            keras.layers.RandomZoom(cfg.zoom, seed=seed + 2),
            keras.layers.RandomZoom((-cfg.height, cfg.height), (-cfg.width, cfg.width), seed=seed + 3),
        ]
    )


def seconds(layer: Callable, images: np.ndarray) -> float:
    step = tf.function(
        lambda x: layer(x, training=True), input_signature=[tf.TensorSpec((None, *images.shape[1:]), tf.float32)]
    )
    step(np.asarray(images[:BATCH], np.float32))  # traced outside the timing
    started = time.perf_counter()
    for i in range(0, len(images), BATCH):
        np.asarray(step(np.asarray(images[i : i + BATCH], np.float32)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2416, help="how many (the 3,000-image set's training part)")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    register_resolvers()
    cfg = compose_spec(["augmentation=standard"]).augmentation
    images = np.random.default_rng(0).integers(0, 256, (options.images, options.size, options.size, 3), np.uint8)
    ours, theirs = [], []
    for _ in range(options.repeats):
        ours.append(seconds(IMAGES.augmentation(cfg, 0), images))
        theirs.append(seconds(keras_chain(cfg, 0), images))
    print(f"{options.images} images at {options.size} px, augmentation=standard, best of {options.repeats}:")
    print(f"  Keras layers one by one : {min(theirs):6.2f} s")
    print(f"  one warp per image      : {min(ours):6.2f} s  ({min(theirs) / min(ours):.1f}x faster)")


if __name__ == "__main__":
    main()
