"""Pretrain the bundled ``tiny`` backbone on digits 0-4, the source task of tlsweep's offline demo.

The demo's target task is digits 5-9: classes the backbone never saw, so the demo is genuine
transfer learning. The weights are deterministic for a given seed, and small (~0.5 MB).

    python scripts/pretrain_tiny.py            # writes tlsweep/weights/tiny.weights.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

from tlsweep.data import stratified_split
from tlsweep.model import compile_model, head
from tlsweep.tasks.images.backbones import PREPROCESSING, preprocessing_layer, tiny_cnn
from tlsweep.tasks.images.data import DIGITS_SOURCE_CLASSES, load_digits

OUT = Path(__file__).resolve().parents[1] / "tlsweep" / "weights" / "tiny.weights.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    x, y = load_digits(DIGITS_SOURCE_CLASSES, 32)
    train, val = stratified_split(y, 0.2, args.seed)
    backbone = tiny_cnn(input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    z = keras.layers.RandomRotation(0.08, seed=args.seed)(inputs)
    z = keras.layers.RandomZoom(0.15, seed=args.seed)(z)
    z = preprocessing_layer(PREPROCESSING["unit"])(z)
    outputs = head(len(DIGITS_SOURCE_CLASSES), 0.5)(backbone(z))
    model = keras.Model(inputs, outputs)
    steps = args.epochs * -(-len(train) // 32)
    compile_model(model, keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)))
    model.fit(x[train], y[train], validation_data=(x[val], y[val]), epochs=args.epochs, batch_size=32, verbose=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
