"""Ship the winner: export the best trial's model of a run or sweep, and test it once on held-out data.

Writes ``<run or sweep folder>/best/``::

    model.keras        the classifier (without its augmentation block) for Keras
    saved_model/       a TensorFlow SavedModel, for TF Serving            (export.saved_model)
    model.tflite       a TFLite model, float32, float16 or int8 weights   (export.tflite, export.quantize)
    labels.txt         the class names, one per line, in output order
    export.json        what is in the folder; ``python -m tlsweep.predict`` reads it
    evaluation.json    the held-out test: accuracy, per-class precision/recall, confusion matrix
    model_card.md      data, backbone, hyperparameters, metrics, and how to use it

``python -m tlsweep.export <folder>`` (re)exports a sweep that ended without it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import tlsweep
from tlsweep import files
from tlsweep.config import rerun_command
from tlsweep.console import native_stderr_to
from tlsweep.errors import TlsweepError, first_line
from tlsweep.groups import QUANTIZE, DatasetSpec, ExportSpec, build
from tlsweep.objective import Objective
from tlsweep.paths import folder_command
from tlsweep.records import DEPTH, EXPORT_FORMAT, EXPORT_VERSION, best_epoch_of
from tlsweep.results import Job, Trial, Winner, load_sweep, winner
from tlsweep.tasks import Task, task_of

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 200  # training images that calibrate int8 quantisation


def export_best(root: Path, cfg: ExportSpec) -> Path | None:
    """Export the answer of the run or sweep in ``root`` (``tlsweep.results.winner``) into ``root/best``; None if
    no run completed."""
    sweep = load_sweep(root)
    found = winner(sweep)
    if found is None:
        log.warning("no trial completed in %s: nothing to export", root)
        return None
    job, model_run = found.job, found.model
    best = {"job": job.name, "trial": model_run.trial_id}
    model_file = job.path / files.BEST_MODEL
    kind = "run" if job.path == Path(root) else "sweep"
    rebuild = f"resume the {kind} to train it again from the records: its command with resume={Path(root).resolve()}"
    if not model_file.is_file():
        raise TlsweepError(f"{model_file} is missing, so the best trial's model cannot be exported; {rebuild}")
    if job.status not in ("completed", "stopped"):
        log.warning("job %s has not finished (%s%s): this exports its best so far, trial_%s; resume it to finish",
                    job.name, job.status, f": {job.error}" if job.error else "", best["trial"])  # fmt: skip

    from tlsweep.model import inference_model
    from tlsweep.tasks import load_classifier

    classes = job.classes
    origin = files.model_origin(model_file)
    if origin is None and not zipfile.is_zipfile(model_file):
        raise TlsweepError(f"{model_file} is damaged (not a whole .keras archive: cut short?); {rebuild}")
    if origin is None or str(origin.get("trial_id")) != str(best["trial"]) or origin.get("classes") != classes:
        held = f"trial_{origin.get('trial_id')} of classes {origin.get('classes')}" if origin else "no trial id"
        raise TlsweepError(
            f"{model_file} holds {held}, but the records' best is trial_{best['trial']} of classes {classes}; "
            f"tlsweep does not export a model other than the one it reports: {rebuild}"
        )
    try:
        model = inference_model(load_classifier(model_file))
    except Exception as e:  # a file cut short or damaged on disk: say which, not a traceback
        raise TlsweepError(f"{model_file} is damaged ({type(e).__name__}: {first_line(e)[:150]}); {rebuild}") from e
    dataset = _dataset(job)
    task = task_of(dataset)
    described = task.describe_input(model, dataset)  # what the model takes: the task's, for the record and predict
    data = _test_and_calibration_data(task, dataset, described.get("image_size"), cfg.tflite and cfg.quantize == "int8")

    target = Path(root) / files.EXPORT_DIR
    staging = Path(root) / f".{files.EXPORT_DIR}.{os.getpid()}.tmp"
    _remove_stale_staging(Path(root))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        formats = _write_formats(model, staging, cfg, data.get("calibration"), origin)
        files.write_text(staging / files.LABELS, "\n".join(classes) + "\n")
        evaluation = None
        if data.get("x_test") is not None:
            from tlsweep.evaluate import evaluate

            log.info("testing the best model on %d held-out %s …", len(data["y_test"]), task.examples)
            probabilities = model.predict(_as_inputs(data["x_test"]), batch_size=64, verbose=0)
            evaluation = evaluate(probabilities, data["y_test"], classes)
            files.write_json(staging / files.EVALUATION, evaluation)
        record = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "tlsweep": tlsweep.__version__,
            "formats": formats,
            "task": task.name,
            **described,
            "classes": classes,
            "job": job.name,
            "trial": best["trial"],
            "metrics": _metrics(found.run, found.objective),
            "hyperparameters": model_run.run.hyperparameters,
            "finalist": _finalist(found),
            "reproduce": rerun_command(job.overrides, found.run.run),
        }
        files.write_json(staging / files.EXPORT_RECORD, record)
        card = model_card(record, job, evaluation, target, _stages(job, model_run))
        files.write_text(staging / files.MODEL_CARD, card)
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    test_note = ""
    if evaluation:
        test_note = f", test accuracy {evaluation['accuracy']:.4f} on {evaluation['images']} {task.examples}"
    log.info("best model (%s trial_%s%s) exported to %s", job.name, best["trial"], test_note, target)
    return target


def _finalist(found: Winner) -> dict[str, Any] | None:
    """How the exported configuration did over its seeds, and which run the model is."""
    group = found.group
    if group is None and not found.refit:
        return None
    chosen = "the seed closest to the configuration's mean"
    if found.refit:
        epochs = found.model.run.best_epoch
        chosen = f"the configuration retrained on training + validation images for {epochs} epochs (finalists.refit)"
    values = group.values if group else [found.value]
    runs = group.runs if group else [found.run]
    low, high = group.interval if group else (found.value, found.value)
    return {
        "objective": found.objective.name,
        "mean": found.value,
        "interval": [low, high],
        "runs": {t.trial_id: v for t, v in zip(runs, values, strict=True)},
        "run": found.run.trial_id,
        "chosen": chosen,
    }


def _metrics(trial: Trial, objective: Objective) -> dict[str, float]:
    """The validation numbers of the run that stands for the answer: of its kept epoch, and stage 1's best."""
    kept = trial.run.kept()
    stage1 = best_epoch_of([e for e in trial.run.history if e.stage == "head"], objective)
    metrics = {k: v for k in ("val_accuracy", "val_loss") if kept is not None and (v := kept.metric(k)) is not None}
    if stage1 is not None and stage1.val_accuracy is not None:
        metrics["stage1_val_accuracy"] = stage1.val_accuracy
    return metrics


def _dataset(job: Job) -> DatasetSpec:
    """The job's dataset, as its record holds it (images for a record that names none)."""
    recorded = job.config.get("dataset")
    return build(DatasetSpec, recorded if isinstance(recorded, dict) else {})


def _test_and_calibration_data(
    task: Task, dataset: DatasetSpec, image_size: int | None, need_calibration: bool
) -> dict[str, Any]:
    """The job's held-out test examples, and training examples for int8 calibration, read as in training."""
    wants_test = bool(dataset.name) and (dataset.test_split > 0 or dataset.test or task.has_test_folder(dataset))
    if not dataset.name or not (wants_test or need_calibration):
        return {}
    data = task.load_data(dataset, image_size)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(data.x_train))[:CALIBRATION_IMAGES]
    return {"x_test": data.x_test, "y_test": data.y_test, "calibration": data.x_train[pick]}


def _as_inputs(examples: np.ndarray) -> np.ndarray:
    """Examples as a model takes them: images as float32, texts as they are."""
    return examples if examples.dtype.kind in "OUS" else examples.astype("float32")


def _write_formats(
    model: Any,
    folder: Path,
    cfg: ExportSpec,
    calibration: np.ndarray | None,
    origin: dict[str, Any],
) -> dict[str, str]:
    """Write each requested format into ``folder``; returns ``{format: file name}``."""
    formats = {"keras": "model.keras"}
    files.save_model(model, folder / formats["keras"], origin)
    if cfg.saved_model or cfg.tflite:
        model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
        formats["saved_model"] = "saved_model"
    if cfg.tflite:
        try:
            converted = _tflite(folder / "saved_model", cfg.quantize, calibration)
        except TlsweepError:
            raise
        except Exception as e:  # ops TFLite has no kernel for (a tokenizer's): the other formats are exported
            log.warning("TFLite cannot convert this model (%s); model.keras and the SavedModel are exported",
                        first_line(e)[:200])  # fmt: skip
        else:
            (folder / "model.tflite").write_bytes(converted)
            formats["tflite"] = "model.tflite"
        if not cfg.saved_model:
            shutil.rmtree(folder / "saved_model")
            del formats["saved_model"]
    return formats


def _tflite(saved_model: Path, quantize: str, calibration: np.ndarray | None) -> bytes:
    """Convert a SavedModel to TFLite; ``int8`` quantises weights and activations, calibrated on images."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise TlsweepError("export.quantize=int8 needs training images to calibrate on, and none were found")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype("float32")] for image in calibration)
    return converter.convert()


def _remove_stale_staging(root: Path) -> None:
    """Remove the half-written exports of processes that are gone (killed while exporting): ``.best.<pid>.tmp``."""
    for folder in root.glob(f".{files.EXPORT_DIR}.*.tmp"):
        pid = folder.name.split(".")[2]
        if pid.isdigit() and not files.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` in place of ``target`` with renames only, so a crash leaves one whole folder."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _stages(job: Job, run: Trial) -> str:
    """How the shipped model was trained, in a few words: what stage 2 fine-tuned, if its weights are kept."""
    finetune = job.config.get("finetune") or {}
    depth = run.run.hyperparameters.get(DEPTH, finetune.get("unfreeze_depth"))
    kept = run.run.kept()
    head = "a new head on the frozen backbone"
    if finetune.get("mode") == "none":
        return f"{head} (finetune=none: the backbone is not fine-tuned)"
    if depth == 0:
        return f"{head} (unfreeze depth 0: the backbone is not fine-tuned)"
    what = "the whole backbone" if finetune.get("mode") == "full" else f"its top {depth} layers (or blocks)"
    if kept is not None and kept.stage == "head":
        return f"{head}; fine-tuning {what} did not improve it, so these are the head's weights (stage 1)"
    return f"{head}, then {what} fine-tuned"


def model_card(record: dict[str, Any], job: Job, evaluation: dict[str, Any] | None, folder: Path, stages: str) -> str:
    """A short Markdown card: what the model is, how it was chosen, how good it is, how to use it."""
    backbone, dataset = job.config.get("backbone", {}), job.config.get("dataset", {})
    job_record = job.record.summary
    metrics = record["metrics"]
    examples = "texts" if record["task"] == "text" else "images"
    lines = [
        f"# Model card: {record['job']} trial_{record['trial']}",
        "",
        "## Model",
        f"- {'Text' if record['task'] == 'text' else 'Image'} classifier over {len(record['classes'])} classes: "
        f"{', '.join(record['classes'])}",
        f"- Backbone: {backbone.get('name', '?')} (weights: {backbone.get('weights', '?')})"
        + (f", {record['image_size']} px input" if record.get("image_size") else "")
        + "; preprocessing is inside the model",
        f"- Input: {record['input']}",
        f"- Trained by tlsweep: {stages}",
        f"- Hyperparameters: {', '.join(f'{k}={v}' for k, v in record['hyperparameters'].items())}",
        "",
        "## Data",
        f"- Dataset: {dataset.get('name', '?')}" + (f" ({dataset['path']})" if dataset.get("path") else ""),
        f"- Examples: {job_record.get('train_images', '?')} training, {job_record.get('val_images', '?')} validation, "
        f"{evaluation['images'] if evaluation else 0} held-out test",
        "",
        "## Metrics",
        f"- Validation accuracy {metrics.get('val_accuracy', float('nan')):.4f} (the search chose this trial on it, "
        "so it is optimistic)",
    ]
    finalist = record.get("finalist")
    if finalist:
        low, high = finalist["interval"]
        lines.append(
            f"- Over {len(finalist['runs'])} seeds its configuration scored {finalist['objective']} "
            f"{finalist['mean']:.4f} on average (95% interval {low:.4f}–{high:.4f}); this model is "
            f"{finalist['chosen']}"
        )
    if evaluation:
        lines += [
            f"- Test accuracy {evaluation['accuracy']:.4f} on {evaluation['images']} held-out {examples} (unbiased)",
            "",
            f"| class | precision | recall | {examples} |",
            "|---|---|---|---|",
            *[
                f"| {c['name']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['images']} |"
                for c in evaluation["classes"]
            ],
        ]
    else:
        lines.append("- No held-out test set (set dataset.test_split or give a test/ folder for one)")
    lines += [
        "",
        "## Use",
        f"- Files: {', '.join(record['formats'].values())}, labels.txt",
        f"- `python -m tlsweep.predict {shlex.quote(str(folder))} path/to/{examples}`",
        f"- Reproduce: `{record['reproduce']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m tlsweep.export FOLDER``: export a run's or sweep's best model; one error line on failure."""
    parser = folder_command(
        "python -m tlsweep.export",
        "Export the best model of a tlsweep run or sweep into its best/ folder, and test it once on the held-out "
        "examples.",
    )
    parser.add_argument("--no-saved-model", action="store_true", help="skip the TensorFlow SavedModel")
    parser.add_argument("--tflite", action="store_true", help="also write model.tflite")
    parser.add_argument("--quantize", choices=QUANTIZE, default="none", help="TFLite weights (default none)")
    args = parser.parse_args(argv)
    cfg = ExportSpec(saved_model=not args.no_saved_model, tflite=args.tflite, quantize=args.quantize)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "Assets written to …"
    try:
        if not args.folder.is_dir():
            raise TlsweepError(f"{args.folder} is not a folder; give a sweep or run folder under outputs/")
        target = export_best(args.folder, cfg)
    except TlsweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if target else 1


if __name__ == "__main__":
    native_stderr_to(None)  # TensorFlow's C++ lines stay off the terminal
    sys.exit(main())
