"""Use the winner: the exported formats predict as the trained model does; the held-out test; predict's CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import FAST, FLOWERS_MINI, FLOWERS_TRIAL, make_image_folder, make_spec, needs_shared

from tlsweep.evaluate import evaluate
from tlsweep.export import export_best
from tlsweep.groups import ExportSpec
from tlsweep.job import run_job
from tlsweep.predict import load_predictor, predict_paths
from tlsweep.predict import main as predict_main
from tlsweep.tasks.images.data import load_images as load_dataset

CHOICES = {"backbone": "tiny", "dataset": "folder", "augmentation": "light"}


pytestmark = pytest.mark.xdist_group("test_export")  # its tests share a module-scoped fixture: one worker


def export_cfg(**overrides) -> ExportSpec:
    return ExportSpec(**{"enabled": True, "saved_model": True, "tflite": True, "quantize": "none", **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A finished run (one folder, as ``python -m tlsweep`` leaves it) with a held-out test split."""
    root = tmp_path_factory.mktemp("export")
    images = make_image_folder(root / "images", per_class=16)
    run = root / "run"
    overrides = ["dataset=folder", f"dataset.path={images}", "augmentation=light", "dataset.test_split=0.25", *FAST]
    learn_fast = [
        "finetune.head_epochs=6",
        "search.params.finetune.optimizer=adam",
        "search.params.finetune.learning_rate=tag(log, interval(5e-3, 1e-2))",
    ]
    cfg = make_spec([*overrides, *learn_fast])
    run_job(cfg, run, CHOICES)
    data = load_dataset(cfg.dataset, 32)
    return {"run": run, "images": images, "data": data, "model": keras.saving.load_model(run / "best.keras")}


@pytest.mark.parametrize("quantize,tolerance", [("none", 1e-4), ("float16", 1e-2), ("int8", 0.1)])
def test_every_exported_format_predicts_like_the_trained_model(trained, tmp_path: Path, quantize, tolerance) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("tensorboard", "tuner"))
    best = export_best(run, export_cfg(quantize=quantize))
    assert best == run / "best"
    x = trained["data"].x_val.astype("float32")
    expected = trained["model"].predict(x, verbose=0)  # predict runs augmentation in inference mode: off
    for fmt, atol in (("keras", 1e-5), ("saved_model", 1e-4), ("tflite", tolerance)):
        predictor = load_predictor(best, fmt)
        got = predictor(x)
        assert predictor.classes == ["cat", "dog", "fox"] and predictor.record["image_size"] == 32
        assert np.abs(got - expected).max() <= atol, (fmt, np.abs(got - expected).max())
        assert (got.argmax(1) == expected.argmax(1)).mean() >= (0.9 if fmt == "tflite" else 1.0)
    record = json.loads((best / "export.json").read_text())
    assert set(record["formats"]) == {"keras", "saved_model", "tflite"} and record["version"] == 1
    assert (best / "labels.txt").read_text().split() == ["cat", "dog", "fox"]


def test_the_held_out_test_scores_the_best_model_on_images_it_never_saw(trained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("tensorboard", "tuner"))
    best = export_best(run, export_cfg(tflite=False, saved_model=False))
    evaluation = json.loads((best / "evaluation.json").read_text())
    data = trained["data"]
    predicted = trained["model"].predict(data.x_test.astype("float32"), verbose=0).argmax(1)
    assert evaluation["images"] == len(data.y_test) == 9  # a quarter of each class's 12 training images
    assert evaluation["accuracy"] == pytest.approx((predicted == data.y_test).mean())
    assert np.trace(np.array(evaluation["confusion"])) == (predicted == data.y_test).sum()
    card = (best / "model_card.md").read_text()
    assert f"Test accuracy {evaluation['accuracy']:.4f} on 9 held-out images" in card
    assert "learning_rate=" in card and "python -m tlsweep.predict" in card
    assert not (best / "saved_model").exists() and (best / "model.keras").is_file()
    shipped = json.loads(
        (run / "trials" / f"trial_{json.loads((best / 'export.json').read_text())['trial']}.json").read_text()
    )
    kept = next(e for e in shipped["history"] if e["epoch"] == shipped["best_epoch"])
    depth = shipped["hyperparameters"]["finetune.unfreeze_depth"]
    said = {  # what the card says stage 2 did, as the shipped run's record has it
        True: "(unfreeze depth 0: the backbone is not fine-tuned)",
        False: "did not improve it, so these are the head's weights"
        if kept["stage"] == "head"
        else f"then its top {depth} layers",
    }[depth == 0]
    assert said in card, card


def test_evaluation_matches_a_hand_computed_confusion_matrix() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])  # one 0 taken for a 1, one 1 taken for a 2
    result = evaluate(np.eye(3)[predicted], labels, ["a", "b", "c"])
    assert result["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    by_name = {c["name"]: c for c in result["classes"]}
    assert by_name["a"]["precision"] == 1.0 and by_name["a"]["recall"] == pytest.approx(2 / 3)
    assert by_name["b"]["precision"] == pytest.approx(1 / 2) and by_name["b"]["recall"] == pytest.approx(1 / 2)
    assert by_name["c"]["precision"] == pytest.approx(1 / 2) and by_name["c"]["recall"] == 1.0
    assert [c["images"] for c in result["classes"]] == [3, 2, 1]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("tensorboard", "tuner"))
    return export_best(run, export_cfg(tflite=False))


def test_predict_prints_top_classes_and_writes_csv_and_names_unreadable_images(
    exported, trained, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "new"
    shutil.copytree(trained["images"] / "val", folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert predict_main([str(exported), str(folder), "--top-k", "2", "--csv", str(tmp_path / "p.csv")]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"error: cannot read {folder / 'broken.jpg'} as an image; skipped"
    lines = [line for line in out.splitlines() if line.startswith(str(folder))]
    assert len(lines) == 12 and all(line.count(",") == 1 for line in lines)  # 4 per class, top 2 each
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,class_1,probability_1,class_2,probability_2" and len(rows) == 13
    predictor = load_predictor(exported)
    results, _ = predict_paths(predictor, [folder])
    truth = [Path(p).parent.name for p, _ in results]
    predicted = [predictor.classes[int(probs.argmax())] for _, probs in results]
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == predicted
    assert sum(t == p for t, p in zip(truth, predicted, strict=True)) >= 10  # chance: 4 of 12


@pytest.mark.parametrize(
    "damage,message",
    [
        ("no_record", "is not a tlsweep export folder"),
        ("newer", "holds export format 99, and this tlsweep reads format 1"),
        ("corrupt_model", "model.keras is damaged (not a whole .keras archive"),
        ("truncated_model", "model.keras is damaged (not a whole .keras archive: cut short?); export the model again"),
        ("not_a_record", "best/export.json is not an export record (it is list, not a mapping); export again"),
        ("no_images", "has no images"),
    ],
)
def test_predict_bad_input_is_one_error_line(exported, tmp_path: Path, capsys, damage: str, message: str) -> None:
    model = tmp_path / "best"
    shutil.copytree(exported, model)
    images = make_image_folder(tmp_path / "images", per_class=1, split=False)
    if damage == "no_record":
        (model / "export.json").unlink()
    elif damage == "newer":
        record = json.loads((model / "export.json").read_text())
        (model / "export.json").write_text(json.dumps({**record, "version": 99}))
    elif damage == "corrupt_model":
        (model / "model.keras").write_bytes(b"garbage")
    elif damage == "truncated_model":  # a copy cut short: the file is there, most of it
        whole = (model / "model.keras").read_bytes()
        (model / "model.keras").write_bytes(whole[: len(whole) * 2 // 3])
    elif damage == "not_a_record":
        (model / "export.json").write_text("[1, 2]")
    elif damage == "no_images":
        images = tmp_path / "empty"
        images.mkdir()
    args = [str(model), str(images)] + (["--format", "keras"] if damage.endswith("_model") else [])
    assert predict_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@needs_shared
def test_predict_on_flower_photos_beats_chance(tmp_path: Path) -> None:
    cfg = make_spec([*FLOWERS_TRIAL, "finetune=none", "finetune.head_epochs=3"])
    run_job(cfg, tmp_path / "run", {"backbone": "mobilenet_v2", "dataset": "folder"})
    best = export_best(tmp_path / "run", export_cfg(tflite=False))
    predictor = load_predictor(best, "saved_model")
    results, unreadable = predict_paths(predictor, [FLOWERS_MINI / "val"])
    assert not unreadable and len(results) == 100
    correct = sum(Path(p).parent.name == predictor.classes[int(probs.argmax())] for p, probs in results)
    assert correct / len(results) > 0.6  # chance is 0.2
