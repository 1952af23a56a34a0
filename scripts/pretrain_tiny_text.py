"""Pretrain the bundled ``tiny_text`` encoder, and write the offline text demo's texts.

The texts are the docstrings of Python's standard library (modules, classes and functions, read with
``ast`` from the source files, never imported), labelled by their top-level package: real English
text on every machine with Python. The encoder is pretrained to tell apart the packages with 30
docstrings or more (the source task, about 50 packages); the demo asks it to tell 5 others apart (the
target task: texts and classes it never saw, its vocabulary too made of the source texts only), so the
demo is genuine transfer learning. Run once; its outputs ship with tlsweep, so the demo's data and numbers do
not change with the Python version that runs it:

    python scripts/pretrain_tiny_text.py   # writes tlsweep/weights/tiny_text.{weights.h5,vocab.txt}
                                           # and tlsweep/tasks/text/demo.jsonl.gz
"""

from __future__ import annotations

import argparse
import ast
import collections
import gzip
import json
import random
import re
import sysconfig
from pathlib import Path

import keras
import numpy as np

from tlsweep.data import stratified_split
from tlsweep.model import compile_model, head
from tlsweep.tasks.text.encoders import SEQUENCE_LENGTH, tiny_text_encoder, vectorizer

ROOT = Path(__file__).resolve().parents[1] / "tlsweep"
TARGET = ("asyncio", "unittest", "multiprocessing", "tkinter", "lib2to3")  # the demo's classes: never seen
MIN_DOCSTRINGS = 30  # a package with fewer is no pretraining class
DEMO_PER_CLASS = 120  # texts per class in the demo
VOCABULARY = 8000  # words, the most frequent in the pretraining texts


def source_packages() -> tuple[str, ...]:
    """The pretraining classes: every public top-level module or package with ``MIN_DOCSTRINGS`` docstrings or
    more, the demo's excepted, most docstrings first."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = {p.stem for p in stdlib.glob("*.py")} | {p.name for p in stdlib.iterdir() if (p / "__init__.py").exists()}
    names = {n for n in names if not n.startswith("_") and n not in TARGET and n not in ("test", "site-packages")}
    found = docstrings(tuple(sorted(names)), strict=False)
    return tuple(sorted((n for n in found if len(found[n]) >= MIN_DOCSTRINGS), key=lambda n: (-len(found[n]), n)))


def docstrings(packages: tuple[str, ...], strict: bool = True) -> dict[str, list[str]]:
    """The docstrings (five words or more, whitespace collapsed) of each package's source files, in file order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, list[str]] = {package: [] for package in packages}
    for package in packages:
        single = stdlib / f"{package}.py"  # a module of one file (turtle), or a package's folder
        for path in [single] if single.is_file() else sorted((stdlib / package).rglob("*.py")):
            if {"test", "tests"} & set(path.relative_to(stdlib).parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = " ".join((ast.get_docstring(node) or "").split())
                    if len(text.split()) >= 5:
                        found[package].append(text)
        if strict and not found[package]:
            raise SystemExit(f"no docstrings of package {package} in {stdlib}: run this with a full CPython")
    return found


def vocabulary(texts: list[str], size: int) -> list[str]:
    """The ``size`` most frequent words, as the tokenizer splits them (lower case, no punctuation)."""
    words = collections.Counter(w for t in texts for w in re.sub(r"[^\w\s]", " ", t.lower()).split())
    return [w for w, _ in words.most_common(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    target = docstrings(TARGET)
    rng = random.Random(args.seed)
    demo = []
    for package in TARGET:
        chosen = rng.sample(sorted(set(target[package])), DEMO_PER_CLASS)
        demo += [{"text": text, "label": package} for text in chosen]
    demo_file = ROOT / "tasks" / "text" / "demo.jsonl.gz"
    with gzip.GzipFile(demo_file, "wb", mtime=0) as f:  # no time stamp: the same texts, the same bytes
        f.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in demo).encode("utf-8"))
    print(f"wrote {demo_file}: {len(demo)} texts of {len(TARGET)} packages ({demo_file.stat().st_size / 1e3:.0f} kB)")

    classes = source_packages()
    source = docstrings(classes)
    texts = [t for package in classes for t in source[package]]
    labels = np.array([i for i, package in enumerate(classes) for _ in source[package]], np.int32)
    words = vocabulary(texts, VOCABULARY)
    tokenizer = vectorizer(words, SEQUENCE_LENGTH)
    ids = keras.ops.convert_to_numpy(tokenizer(np.array(texts, dtype=object)))
    train, val = stratified_split(labels, 0.15, args.seed)
    encoder = tiny_text_encoder(len(words) + 2, SEQUENCE_LENGTH)
    inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    model = keras.Model(inputs, head(len(classes), 0.3, pool=False)(encoder(inputs)))
    counts = np.bincount(labels[train])
    weights = {i: len(train) / (len(classes) * n) for i, n in enumerate(counts)}  # the big packages do not dominate
    compile_model(model, keras.optimizers.Adam(2e-3))
    model.fit(ids[train], labels[train], validation_data=(ids[val], labels[val]), epochs=args.epochs, batch_size=32,
              class_weight=weights, verbose=2)  # fmt: skip
    weights_file = ROOT / "weights" / "tiny_text.weights.h5"
    encoder.save_weights(weights_file)
    (ROOT / "weights" / "tiny_text.vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"wrote {weights_file} ({weights_file.stat().st_size / 1e6:.2f} MB) and its {len(words)}-word vocabulary, "
          f"pretrained on {len(texts)} docstrings of {len(classes)} packages: {', '.join(classes)}")  # fmt: skip


if __name__ == "__main__":
    main()
