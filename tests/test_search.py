"""A job end to end, in process: the search, the trial records, TensorBoard, the best model."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf
from conftest import FAST, make_spec
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tlsweep
from tlsweep.errors import TlsweepError
from tlsweep.files import TUNER_DIR
from tlsweep.job import run_job

CHOICES = {"backbone": "tiny", "dataset": "folder", "augmentation": "light", "tuner": "random"}


pytestmark = pytest.mark.xdist_group("test_search")  # its tests share a module-scoped fixture: one worker


def run(image_folder: Path, job_dir: Path, *overrides: str) -> dict:
    hyperband = "tuner=hyperband" in overrides  # Hyperband sets its own number of trials
    fast = [o for o in FAST if not (hyperband and o.startswith("tuner.max_trials"))]
    spec = make_spec(["dataset=folder", f"dataset.path={image_folder}", "augmentation=light", *fast, *overrides])
    return run_job(spec, job_dir, CHOICES)


def records(job_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((job_dir / "trials").glob("trial_*.json"))]


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("job")
    run(make_image_folder(root / "images"), root / "job", "tuner.max_trials=3")
    return root / "job"


def test_job_record_says_completed_with_the_best_trial(job: Path) -> None:
    record = json.loads((job / "job.json").read_text())
    assert record["status"] == "completed" and record["completed_trials"] == 3
    assert record["classes"] == ["cat", "dog", "fox"]
    best = max(records(job), key=lambda r: r["value"])
    assert record["best"]["value"] == pytest.approx(best["value"])


def test_every_trial_records_both_stages_on_one_epoch_axis(job: Path) -> None:
    trials = records(job)
    assert len(trials) == 3
    for trial in trials:
        assert trial["status"] == "completed"
        searched = {"finetune.learning_rate", "finetune.optimizer", "finetune.unfreeze_depth"}
        assert set(trial["hyperparameters"]) == searched
        assert trial["choices"] == CHOICES and trial["settings"]["image_size"] == 32
        assert [(e["epoch"], e["stage"]) for e in trial["history"]] == [(1, "head"), (2, "finetune")]
        lrs = [e["learning_rate"] for e in trial["history"]]
        assert lrs[1] == pytest.approx(lrs[0] * 0.1, rel=1e-5)  # stage 2 runs at lr × lr_scale
        assert {"val_loss", "val_accuracy", "loss", "accuracy"} <= set(trial["history"][0])
        best_entry = trial["history"][trial["best_epoch"] - 1]
        assert trial["value"] == pytest.approx(best_entry["val_accuracy"]) and trial["objective"] == "val_accuracy"
        assert trial["rolled_back"] == (trial["stages"]["finetune"]["value"] <= trial["stages"]["head"]["value"])
        assert trial["duration_s"] > 0


def test_best_model_and_labels_reload_and_predict(job: Path) -> None:
    assert (job / "labels.txt").read_text().split() == ["cat", "dog", "fox"]
    model = keras.saving.load_model(job / "best.keras")
    probs = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_keras_tuner_project_reloads(job: Path, capsys) -> None:
    assert (job / TUNER_DIR / "oracle.json").is_file()
    tuner = kt.RandomSearch(
        hypermodel=lambda hp: None,
        objective="val_accuracy",
        max_trials=3,
        directory=str(job),
        project_name=TUNER_DIR,
        overwrite=False,
    )
    assert len(tuner.oracle.trials) == 3
    tuner.results_summary(1)
    assert "Score:" in capsys.readouterr().out


def test_load_tuner_ranks_trials_as_the_job_did(job: Path) -> None:
    best = json.loads((job / "job.json").read_text())["best"]
    tuner = tlsweep.load_tuner(job)
    assert tuner.oracle.objective.direction == "max"
    ranked = tuner.oracle.get_best_trials(3)
    assert [t.score for t in ranked] == sorted((r["value"] for r in records(job)), reverse=True)
    assert ranked[0].score == pytest.approx(best["value"])  # the job's best (or one tied with it), not the worst
    tied = [r["hyperparameters"] for r in records(job) if r["value"] == best["value"]]
    assert tuner.get_best_hyperparameters()[0].values in tied
    with pytest.raises(TlsweepError, match="best.keras"):
        tuner.hypermodel.build(tuner.get_best_hyperparameters()[0])


def hparams_session(run_dir: Path) -> dict:
    """What TensorBoard's HParams plugin reads from a trial's run: its name, values, status and metrics."""
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(run_dir)).Reload()
    content = events.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    metrics = {
        tag: (tensor.step, float(tf.make_ndarray(tensor.tensor_proto)))
        for tag in events.Tags()["tensors"]
        if not tag.startswith("_hparams_")
        for tensor in events.Tensors(tag)
    }
    values = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    return {"name": start.group_name, "values": values, "status": end.status, "metrics": metrics}


def test_tensorboard_has_scalars_and_hparams_for_every_trial(job: Path) -> None:
    from tensorboard.plugins.hparams import api_pb2

    for trial in records(job):
        run_dir = job / trial["tensorboard"]
        train = EventAccumulator(str(run_dir / "train")).Reload()
        val = EventAccumulator(str(run_dir / "validation")).Reload()
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train.Tags()["tensors"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(val.Tags()["tensors"])
        # one point per epoch, in order, in one event file per split for both stages (tlsweep.logs.RunBoard)
        assert [e.step for e in val.Tensors("epoch_accuracy")] == [0, 1]
        event_files = [list((run_dir / split).glob("events.out.tfevents.*")) for split in ("train", "validation")]
        assert [len(found) for found in event_files] == [1, 1]
        session = hparams_session(run_dir)
        values = session["values"]
        assert values["backbone"] == "tiny" and values["augmentation"] == "light"
        for key in ("finetune.optimizer", "finetune.learning_rate", "finetune.unfreeze_depth"):
            assert values[key] == trial["hyperparameters"][key]
        assert values["job"] == "job" and values["sweep"] == "job"  # a job run alone is its own sweep
        assert session["name"] == f"tensorboard/trial_{trial['trial_id']}"  # relative to the logdir, not absolute
        assert session["status"] == api_pb2.STATUS_SUCCESS
        kept = trial["history"][trial["best_epoch"] - 1]  # the kept epoch, as the report shows it
        assert session["metrics"]["val_accuracy"] == (trial["best_epoch"], pytest.approx(trial["value"]))
        for name in ("val_loss", "accuracy", "loss"):
            assert session["metrics"][name][1] == pytest.approx(kept[name])


def test_stage_2_changes_only_the_unfrozen_top(image_folder: Path, tmp_path: Path) -> None:
    from tlsweep.tasks.images.backbones import load_backbone

    run(
        image_folder,
        tmp_path / "job",
        "tuner.max_trials=1",
        "search.params.finetune.unfreeze_depth=4",
        "search.params.finetune.optimizer=sgd",
        "search.params.finetune.learning_rate=0.05",
        "augmentation=none",
        "finetune.finetune_epochs=3",
        "finetune.lr_scale=1",
        "tuner.objective=val_loss",
    )
    trial = records(tmp_path / "job")[0]
    assert trial["best_stage"] == "finetune", "stage 2 must win for this check to mean anything"
    pretrained = load_backbone(make_spec().backbone, 32).build()
    tuned = keras.saving.load_model(tmp_path / "job" / "best.keras").get_layer("backbone")
    changed = {
        layer.name
        for layer, old in zip(tuned.layers, pretrained.layers, strict=True)
        if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), old.get_weights(), strict=True))
    }
    assert changed == {"block2_b_conv"}  # top 4: block2_b_conv, block2_b_bn (frozen), add and relu (no weights)


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband", "grid"])
def test_other_tuners_run_two_stage_trials(image_folder: Path, tmp_path: Path, tuner: str) -> None:
    overrides = [f"tuner={tuner}", "search.params.finetune.optimizer=adam", "search.params.finetune.unfreeze_depth=2"]
    if tuner == "hyperband":
        overrides += ["finetune.head_epochs=2", "finetune.finetune_epochs=1", "tuner.factor=3"]
    else:
        overrides += ["tuner.max_trials=2", "search.params.finetune.learning_rate=tag(log, interval(1e-3, 1e-2))"]
    if tuner == "bayesian":
        overrides.append("tuner.num_initial_points=1")
    result = run(image_folder, tmp_path / "job", *overrides)
    trials = records(tmp_path / "job")
    assert result.status == "completed" and trials
    assert all(t["status"] == "completed" for t in trials)
    if tuner == "grid":
        assert sorted(t["hyperparameters"]["finetune.learning_rate"] for t in trials) == pytest.approx([1e-3, 1e-2])
    if tuner == "hyperband":
        assert any(e["stage"] == "finetune" for t in trials for e in t["history"])
