"""``python -m tlsweep.predict MODEL_DIR INPUTS…``: the top classes of each image or text, from an exported model.

MODEL_DIR is an export folder (``outputs/sweeps/<time>/best``). Its task reads the inputs as in
training (``tlsweep.tasks``): images decoded and resized; texts from ``.txt`` files, folders of them,
or tables (CSV, TSV, JSONL); the model holds its own preprocessing. Any exported format works:
``model.keras`` first, then the SavedModel, then ``model.tflite`` (or choose with ``--format``).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tlsweep import files  # noqa: E402
from tlsweep.console import native_stderr_to  # noqa: E402
from tlsweep.errors import TlsweepError, first_line  # noqa: E402
from tlsweep.records import EXPORT_VERSION, RecordError, read_export  # noqa: E402

FORMATS = ("keras", "saved_model", "tflite")
BATCH = 32


@dataclass
class Predictor:
    """An exported model, loaded in one of its formats: examples as its task reads them → probabilities."""

    classes: list[str]
    record: dict  # the export's record: its task, what its model takes
    format: str
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, examples: np.ndarray) -> np.ndarray:
        texts = examples.dtype.kind in "OUS"
        batches = [examples[i : i + BATCH] for i in range(0, len(examples), BATCH)]
        out = [self.run(b.astype(object if texts else "float32")) for b in batches]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), "float32")


def load_predictor(folder: Path, fmt: str | None = None) -> Predictor:
    """Load the export in ``folder``; raises TlsweepError saying what is wrong with the folder."""
    folder = Path(folder)
    record_file = folder / files.EXPORT_RECORD
    try:
        record = read_export(folder)
    except RecordError as e:
        raise TlsweepError(f"{e}; export again with python -m tlsweep.export <sweep folder>") from None
    if record is None:
        inside = folder / files.EXPORT_DIR
        hint = f" (the export is in {inside})" if (inside / files.EXPORT_RECORD).is_file() else ""
        raise TlsweepError(
            f"{folder} is not a tlsweep export folder: it has no {files.EXPORT_RECORD}{hint}; "
            "give outputs/sweeps/<time>/best, or create it with python -m tlsweep.export <sweep folder>"
        )
    if record["version"] != EXPORT_VERSION:
        raise TlsweepError(
            f"{folder} holds export format {record['version']!r}, and this tlsweep reads format {EXPORT_VERSION}; "
            "re-export it with this version (python -m tlsweep.export <sweep folder>) or use the tlsweep that made it"
        )
    classes = record["classes"]
    keras_file = folder / record.get("formats", {}).get("keras", "model.keras")
    origin = files.model_origin(keras_file) if keras_file.is_file() else None
    mismatch = origin is not None and (origin.get("classes"), str(origin.get("trial_id"))) != (
        classes,
        str(record.get("trial")),
    )
    if origin is not None and mismatch:
        raise TlsweepError(
            f"{keras_file} is trial_{origin.get('trial_id')} of classes {origin.get('classes')}, but {record_file} "
            f"says trial_{record.get('trial')} of classes {classes}; re-export with python -m tlsweep.export"
        )
    available = [f for f in FORMATS if f in record.get("formats", {}) and (folder / record["formats"][f]).exists()]
    if fmt is not None and fmt not in available:
        raise TlsweepError(f"{folder} has no {fmt} model; it has: {', '.join(available) or 'none'}")
    if not available:
        raise TlsweepError(f"{folder} lists no model file that exists; re-export with python -m tlsweep.export")
    chosen = fmt or available[0]
    path = folder / record["formats"][chosen]
    try:
        run = {"keras": _keras, "saved_model": _saved_model, "tflite": _tflite}[chosen](path)
    except Exception as e:  # the file is there (listed and found): it is damaged, or not one tlsweep wrote
        whole = chosen != "keras" or zipfile.is_zipfile(path)
        why = f"{type(e).__name__}: {first_line(e)[:200]}" if whole else "not a whole .keras archive: cut short?"
        again = shlex.join(["python", "-m", "tlsweep.export", str(folder.resolve().parent)])
        raise TlsweepError(f"{path} is damaged ({why}); export the model again: {again}") from e
    return Predictor([str(c) for c in classes], record, chosen, run)


def _keras(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from tlsweep.tasks import load_classifier

    model = load_classifier(path)
    return lambda x: np.asarray(model.predict(x, verbose=0))


def _saved_model(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: next(iter(serve(tf.constant(x)).values())).numpy()


def _tflite(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    with warnings.catch_warnings():  # TF announces its move to LiteRT; the interpreter still works
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(input_index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    return run


def predict_paths(predictor: Predictor, paths: list[Path]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """``([(name, probabilities)], [unreadable names])`` for the inputs in ``paths``, read by the export's task."""
    from tlsweep.tasks import task_named

    names, examples, unreadable = task_named(predictor.record.get("task")).read(paths, predictor.record)
    probabilities = predictor(examples) if len(names) else np.zeros((0, len(predictor.classes)))
    return list(zip(names, probabilities, strict=True)), unreadable


def main(argv: list[str] | None = None) -> int:
    """Print the top-k classes per input (or write them as CSV); one ``error:`` line per problem."""
    parser = argparse.ArgumentParser(
        prog="python -m tlsweep.predict",
        description="Print the top classes of each input with a model tlsweep exported: images (files or folders of "
        "them), or texts (.txt files, folders of them, or CSV/TSV/JSONL tables with a text column).",
    )
    parser.add_argument("model", type=Path, help="an export folder, e.g. outputs/sweeps/<time>/best")
    parser.add_argument("inputs", type=Path, nargs="+", help="files and/or folders of images or texts, or tables")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per input (default 3)")
    parser.add_argument("--format", choices=FORMATS, help="which exported model to use (default: the first found)")
    parser.add_argument("--csv", type=Path, help="also write path, class and probability columns to this CSV file")
    args = parser.parse_args(argv)
    try:
        predictor = load_predictor(args.model, args.format)
        results, unreadable = predict_paths(predictor, args.inputs)
    except TlsweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    k = max(1, min(args.top_k, len(predictor.classes)))
    for path in unreadable:
        print(f"error: cannot read {path} as {'a text' if predictor.record.get('task') == 'text' else 'an image'}; "
              "skipped", file=sys.stderr)  # fmt: skip
    rows = []
    for path, probs in results:
        top = np.argsort(probs)[::-1][:k]
        print(f"{path}: " + ", ".join(f"{predictor.classes[i]} {probs[i]:.3f}" for i in top))
        rows.append([str(path), *(x for i in top for x in (predictor.classes[i], f"{probs[i]:.6f}"))])
    if args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", *(f"{name}_{j}" for j in range(1, k + 1) for name in ("class", "probability"))])
        writer.writerows(rows)
        try:
            files.write_text(args.csv, buffer.getvalue())
        except OSError as e:  # a read-only folder, a full disk: the predictions above are printed anyway
            print(f"error: cannot write {args.csv} ({e.strerror or e}); choose another --csv path", file=sys.stderr)
            return 1
        print(f"predictions of {len(rows)} inputs written to {args.csv}")
    return 1 if unreadable else 0


if __name__ == "__main__":
    native_stderr_to(None)  # TensorFlow's C++ lines stay off the terminal
    sys.exit(main())
