"""The feature cache is exact: a trial on cached tensors trains the same weights as the plain way."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest
from conftest import FAST, make_spec, swallow_ctrl_c

from tlsweep import interrupt
from tlsweep.backbone import crossing_tensors
from tlsweep.batches import CachedData, PlainData
from tlsweep.cache.features import make_cache
from tlsweep.cache.store import DiskArray, Store, Writer
from tlsweep.errors import TlsweepError
from tlsweep.logs import TrialLog
from tlsweep.model import SharedClassifier
from tlsweep.records import RunRecord
from tlsweep.tasks.images import IMAGES
from tlsweep.tasks.images.backbones import load_backbone
from tlsweep.tasks.images.data import load_images as load_dataset
from tlsweep.trial import TwoStageTrial, seed_keras

DEPTH = 4  # block2_b_conv, block2_b_bn, block2_add, block2_out: a cut inside the last residual block


def config(image_folder: Path, tmp_path: Path, augmentation: str, *more: str):
    return make_spec(
        [
            "dataset=folder",
            f"dataset.path={image_folder}",
            f"augmentation={augmentation}",
            *FAST,
            "finetune.head_epochs=2",
            "finetune.finetune_epochs=2",
            f"feature_cache.dir={tmp_path / 'cache'}",
            *more,
        ]
    )


def job_inputs(image_folder: Path, tmp_path: Path, augmentation: str = "none", *more: str):
    """A job's spec, decoded images and backbone, at 32 px."""
    spec = config(image_folder, tmp_path, augmentation, *more)
    return spec, load_dataset(spec.dataset, 32), load_backbone(spec.backbone, 32)


def two_stage(spec, backbone, source) -> TwoStageTrial:
    """A job's trial on its classifier and batch source, as the job sets it up."""
    augment = lambda: IMAGES.augmentation(spec.augmentation, spec.seed)  # noqa: E731
    classifier = SharedClassifier(backbone, 3, augment)
    return TwoStageTrial(spec, classifier, source)


def train(cfg, backbone, source, job_dir: Path) -> tuple[keras.Model, list[dict]]:
    """One trial (learning rate 0.01, Adam, top 4 layers unfrozen), as the tuner runs it."""
    return trial(two_stage(cfg, backbone, source), job_dir)


def trial(job_trial: TwoStageTrial, job_dir: Path, learning_rate: float = 0.01, seed: int = 7, **settings):
    """One run of ``job_trial`` with these settings (``finetune.<name>``, each searched by the job's spec)."""
    hp = kt.HyperParameters()
    job_trial.settings(hp)
    chosen = {"learning_rate": learning_rate, "optimizer": "adam", "unfreeze_depth": DEPTH, **settings}
    hp.values.update({f"finetune.{name}": value for name, value in chosen.items()})
    seed_keras(seed)  # as SweepTuner.run_trial seeds a trial
    model = job_trial.build(hp)
    log = TrialLog(job_dir, RunRecord(str(seed), hyperparameters=dict(hp.values)), "trial", verbose=False)
    job_trial.fit(hp, model, trial_log=log, seed=seed)
    return model, [dataclasses.asdict(e) for e in log.record.history]


def test_the_cut_inside_a_residual_block_has_two_crossing_tensors(image_folder: Path, tmp_path: Path) -> None:
    backbone = load_backbone(config(image_folder, tmp_path, "none").backbone, 32).build()
    producers = sorted(t._keras_history.operation.name for t in crossing_tensors(backbone, DEPTH))
    assert producers == ["block2_a_relu", "down2_relu"]  # into block2_b_conv, and the skip into block2_add


@pytest.mark.parametrize("augmentation", ["none", "light"])
def test_a_cached_trial_trains_what_the_plain_trial_trains(image_folder: Path, tmp_path: Path, augmentation) -> None:
    cfg, data, backbone = job_inputs(image_folder, tmp_path, augmentation)
    cache = make_cache(cfg, backbone, data, IMAGES)
    assert cache.views == (2 if augmentation == "light" else 1)  # one view per epoch of the longer stage

    cached_model, cached_history = train(cfg, backbone, CachedData(cache), tmp_path / "cached")
    # The plain way on the same augmented views: the whole model runs every epoch, augmentation done outside it.
    views = [cache.view_images(v) for v in range(cache.views)]
    plain_cfg = config(image_folder, tmp_path, "none")
    plain_model, plain_history = train(plain_cfg, backbone, PlainData(data, views), tmp_path / "plain")

    assert [e["stage"] for e in cached_history] == ["head", "head", "finetune", "finetune"]
    for cached, plain in zip(cached_history, plain_history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert cached[key] == pytest.approx(plain[key], abs=1e-4), (key, cached, plain)
    trained = ["block2_b_conv", "head"]  # what stage 2 changes (BatchNorm stays frozen)
    for name in trained:
        layer_c = cached_model.get_layer(name) if name == "head" else cached_model.get_layer("backbone").get_layer(name)
        layer_p = plain_model.get_layer(name) if name == "head" else plain_model.get_layer("backbone").get_layer(name)
        for a, b in zip(layer_c.get_weights(), layer_p.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    if augmentation == "light":  # the views differ from the images, and from each other
        assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[0], data.x_train)


def test_a_float16_cache_trains_as_the_float32_cache_does(image_folder: Path, tmp_path: Path) -> None:
    histories = {}
    for dtype in ("float32", "float16"):
        cfg, data, backbone = job_inputs(image_folder, tmp_path / dtype, "none", f"feature_cache.dtype={dtype}")
        cache = make_cache(cfg, backbone, data, IMAGES)
        assert cache.val(0)[0].dtype == np.dtype(dtype)
        histories[dtype] = train(cfg, backbone, CachedData(cache), tmp_path / dtype)[1]
    for a, b in zip(histories["float32"], histories["float16"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-3) and a["val_loss"] == pytest.approx(
            b["val_loss"], abs=2e-3
        )
        assert a["val_accuracy"] == b["val_accuracy"]


def test_a_trial_trains_the_same_whichever_trials_ran_before_it(image_folder: Path, tmp_path: Path) -> None:
    """A job reuses one classifier and its compiled steps: no weight, optimizer or random state leaks."""
    cfg, data, backbone = job_inputs(image_folder, tmp_path, "light")  # plain: augmentation, dropout in the model
    job_trial = two_stage(cfg, backbone, PlainData(data))
    model, first = trial(job_trial, tmp_path)
    weights = [w.copy() for w in model.get_weights()]
    trial(job_trial, tmp_path, learning_rate=0.05, seed=8)  # same depth and optimizer: the same compiled model
    model, again = trial(job_trial, tmp_path)

    assert [(e["loss"], e["val_accuracy"]) for e in again] == [(e["loss"], e["val_accuracy"]) for e in first]
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("knob,values", [("label_smoothing", (0.0, 0.2)), ("weight_decay", (0.0, 0.5)),
                                          ("dropout", (0.0, 0.6))])  # fmt: skip
def test_trials_that_differ_only_in_a_compiled_value_train_differently(
    image_folder: Path, tmp_path: Path, knob: str, values: tuple[float, float]
) -> None:
    """A job reuses compiled steps: a value compiled into one (the loss' label smoothing, the optimizer's weight
    decay, the dropout rate) must reach the trial that asked for it, not stay the first trial's."""
    space = f"search.params.finetune.{knob}=choice({values[0]}, {values[1]})"
    cfg, data, backbone = job_inputs(image_folder, tmp_path, "none", space)
    job_trial = two_stage(cfg, backbone, CachedData(make_cache(cfg, backbone, data, IMAGES)))
    runs = {v: trial(job_trial, tmp_path / str(v), **{knob: v}) for v in (*values, values[0])}  # the first again
    first, other = (runs[v][1] for v in values)
    assert [e["loss"] for e in first] != [e["loss"] for e in other]  # the other value trained the other way
    records = {v: json.loads((tmp_path / str(v) / "trials" / "trial_7.json").read_text()) for v in values}
    assert [records[v]["hyperparameters"][f"finetune.{knob}"] for v in values] == list(values)  # each its own


def test_the_cache_is_reused_and_a_changed_input_gets_a_new_key(image_folder: Path, tmp_path: Path) -> None:
    cfg, data, backbone = job_inputs(image_folder, tmp_path)
    first = make_cache(cfg, backbone, data, IMAGES)
    assert first.depths == [0, 3]  # the search's unfreeze depths: every cut is made on first use
    first.train_views(0)
    assert (first.store.built, first.store.reused) == (1, 0)
    first.val(0), first.train_views(DEPTH)  # validation's cut; a depth the search did not name
    assert (first.store.built, first.store.reused) == (3, 0)

    again = make_cache(cfg, backbone, data, IMAGES)  # another job, or a later sweep, with the same inputs
    np.testing.assert_array_equal(again.train_views(DEPTH)[0][1], first.train_views(DEPTH)[0][1])
    assert (again.store.built, again.store.reused) == (0, 1)

    data.x_train[0, 0, 0, 0] ^= 1  # one pixel of one image changed
    changed = make_cache(cfg, backbone, data, IMAGES)
    changed.train_views(0)
    assert (changed.store.built, changed.store.reused) == (1, 0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed Ctrl-C, on purpose
def test_a_ctrl_c_that_library_code_swallows_stops_the_cache_build_and_leaves_no_partial_key(
    image_folder: Path, tmp_path: Path
) -> None:
    cfg, data, backbone = job_inputs(image_folder, tmp_path)
    cache = make_cache(cfg, backbone, data, IMAGES)
    with interrupt.handled():
        swallow_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            cache.prepare()
    assert cache.store.built == 0 and not list((tmp_path / "cache").iterdir())


def test_a_cache_prepared_on_the_jobs_network_lets_it_go_before_trials_train_it(
    image_folder: Path, tmp_path: Path
) -> None:
    cfg, data, backbone = job_inputs(image_folder, tmp_path)
    cache = make_cache(cfg, backbone, data, IMAGES)
    network = backbone.build()  # the job's classifier's backbone
    cache.prepare(network)
    assert (cache.store.built, cache.store.reused) == (4, 0)  # both cuts of train and val, before any trial
    for variable in network.weights:  # trials then train it
        variable.assign(variable + 0.5)

    later = cache.train_views(DEPTH)[0]  # a cut the search did not name, asked for mid-search
    cfg = dataclasses.replace(
        cfg, feature_cache=dataclasses.replace(cfg.feature_cache, dir=str(tmp_path / "elsewhere"))
    )
    pristine = make_cache(cfg, backbone, data, IMAGES)
    for a, b in zip(later, pristine.train_views(DEPTH)[0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(cache.val(3), pristine.val(3), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_each_cut_made_from_the_one_below_equals_the_cut_made_from_the_images(
    image_folder: Path, tmp_path: Path
) -> None:
    cfg, data, backbone = job_inputs(image_folder, tmp_path)
    chained = make_cache(cfg, backbone, data, IMAGES)
    chained.depths = [0, 2, DEPTH, 8, backbone.num_layers]
    chained.prepare()  # every cut in one pass, each from the one below it
    assert chained.store.built == 10
    for depth in chained.depths:
        direct = chained.compute(depth, "val", 0)
        for a, b in zip(chained.val(depth), direct, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert chained.val(0)[0].shape == (len(data.y_val), backbone.build().output.shape[-1])  # pooled for the head


def test_the_store_reads_big_arrays_from_disk_keeps_float16_and_survives_a_race(tmp_path: Path) -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((3, 2), np.float32)]
    small = Store(tmp_path).get({"k": 1}, lambda: arrays)
    assert isinstance(small[0], np.ndarray)
    big = Store(tmp_path).get({"k": 1}, lambda: pytest.fail("must be reused"), in_memory=False)
    assert isinstance(big[0], DiskArray) and np.array_equal(big[0][:], arrays[0])
    np.testing.assert_array_equal(big[0][np.array([2, 0, 2])], arrays[0][[2, 0, 2]])  # rows by index, any order
    half = Store(tmp_path, dtype="float16").get({"k": 2}, lambda: arrays)
    assert half[0].dtype == np.float16

    store = Store(tmp_path)
    folder = store.folder({"k": 1})
    (folder / "1.npy").write_bytes(b"damaged")
    rebuilt = store.get({"k": 1}, lambda: arrays)  # a damaged cache is built again, not loaded
    assert np.array_equal(rebuilt[1], arrays[1]) and store.built == 1

    with store.write({"k": 1}, [a.shape for a in arrays]) as writers:  # a second process finishing the same key
        for writer, array in zip(writers, arrays, strict=True):
            writer.append(array)
    assert json.loads((folder / "done.json").read_text())["arrays"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_key_is_checksummed_once_per_store_not_after_its_own_write(tmp_path: Path, monkeypatch) -> None:
    """Reading a just-written cut back to check it would read every byte again (gigabytes at scale)."""
    from tlsweep.cache import store as store_module

    hashed: list[str] = []
    real = store_module._sha256
    monkeypatch.setattr(store_module, "_sha256", lambda path: hashed.append(path.name) or real(path))
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    writer = Store(tmp_path)
    writer.get({"k": 1}, lambda: arrays)
    writer.load({"k": 1}, in_memory=False)
    assert hashed == []  # its checksum was computed as the rows were written
    reader = Store(tmp_path)  # another job: checks the key once, then trusts it
    reader.load({"k": 1}, in_memory=True)
    reader.load({"k": 1}, in_memory=False)
    assert hashed == ["0.npy"]


def test_a_garbled_array_or_a_listing_without_arrays_is_rebuilt_not_used(tmp_path: Path) -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    Store(tmp_path).get({"k": 1}, lambda: arrays)
    folder = Store(tmp_path).folder({"k": 1})
    data = bytearray((folder / "0.npy").read_bytes())
    data[-8:] = b"\x7f" * 8  # the same size, other numbers: np.load would read it happily
    (folder / "0.npy").write_bytes(bytes(data))
    store = Store(tmp_path)
    assert np.array_equal(store.get({"k": 1}, lambda: arrays)[0], arrays[0]) and store.built == 1
    (folder / "done.json").write_text(json.dumps({"fields": {"k": 1}}))  # lists no arrays
    store = Store(tmp_path)
    assert np.array_equal(store.get({"k": 1}, lambda: arrays)[0], arrays[0]) and store.built == 1


def test_half_built_parts_of_killed_builds_are_cleaned_up(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".abc.{dead.stdout.strip()}.tmp"
    stale.mkdir()
    (stale / "0.npy").write_bytes(b"half")
    live = tmp_path / f".def.{os.getpid()}.tmp"  # a build still running in a live process is left alone
    live.mkdir()
    Store(tmp_path).get({"k": 1}, lambda: [np.ones((2, 2), np.float32)])
    assert not stale.exists() and live.exists()


def test_a_full_disk_while_the_cache_is_written_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError("write failed")  # as NumPy raises it: no errno

    monkeypatch.setattr(Writer, "append", no_space)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(TlsweepError, match="the disk is full while writing the feature cache"):
        Store(tmp_path).get({"k": 1}, lambda: [np.ones((64, 64), np.float32)])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
