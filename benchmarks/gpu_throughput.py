"""Training throughput (images per second) of stage 1 and stage 2 with each accelerator switch.

Runs on a GPU machine and on CPU. For one backbone (random weights: speed does not depend on
them) it trains the plain classifier on synthetic images, as a trial does, and times the steps
after a warm-up, side by side in one process, for each of:

    float32 | mixed_float16 | jit_compile | mixed_float16 + jit_compile

Stage 1 trains the head on the frozen backbone; stage 2 unfreezes the top layers as well.

    python benchmarks/gpu_throughput.py                       # MobileNetV2, 160 px, batch 64
    python benchmarks/gpu_throughput.py --backbone resnet --size 224 --batch 128 --steps 50

Mixed precision speeds up GPUs with tensor cores; on a CPU it is emulated and slower.
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
from tlsweep.model import build_classifier, compile_model, unfreeze_top  # noqa: E402
from tlsweep.paths import register_resolvers  # noqa: E402
from tlsweep.tasks.images.backbones import load_backbone  # noqa: E402

SWITCHES = {
    "float32": ("float32", False),
    "mixed_float16": ("mixed_float16", False),
    "jit_compile": ("float32", True),
    "mixed_float16 + jit_compile": ("mixed_float16", True),
}


def throughput(backbone_name: str, size: int, batch: int, steps: int, precision: str, jit: bool, depth: int) -> float:
    """Images per second over ``steps`` training steps after a warm-up, at unfreeze ``depth``."""
    keras.mixed_precision.set_global_policy(precision)
    register_resolvers()
    cfg = compose_spec([f"backbone={backbone_name}", "backbone.weights=null"])
    backbone = load_backbone(cfg.backbone, size)
    model = build_classifier(backbone, 5, 0.2, None)
    unfreeze_top(model, backbone, depth)
    compile_model(model, keras.optimizers.Adam(1e-4), jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 5, batch)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(tf.data.AUTOTUNE)
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--depth", type=int, default=30, help="unfreeze depth of stage 2")
    args = parser.parse_args()
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    device = ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "CPU"
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, {args.steps} steps, on {device}")
    print(f"{'switches':<30}{'stage 1 img/s':>15}{'stage 2 img/s':>15}")
    base = None
    for name, (precision, jit) in SWITCHES.items():
        setting = (args.backbone, args.size, args.batch, args.steps, precision, jit)
        rates = [throughput(*setting, depth) for depth in (0, args.depth)]
        base = base or rates
        ratios = "  ".join(f"{r / b:.2f}x" for r, b in zip(rates, base, strict=True))
        print(f"{name:<30}{rates[0]:>15.0f}{rates[1]:>15.0f}   ({ratios} of float32)")
    keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main()
