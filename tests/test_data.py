"""Datasets load from folders, scikit-learn and TFDS; bad folders fail with one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import class_image, make_image_folder, make_spec, write_image
from PIL import Image

from tlsweep.batches import EpochBatches
from tlsweep.cache.store import DiskArray, Store
from tlsweep.errors import TlsweepError
from tlsweep.tasks.images import decode as data_module
from tlsweep.tasks.images.data import DIGITS_SOURCE_CLASSES, DIGITS_TARGET_CLASSES
from tlsweep.tasks.images.data import load_images as load_dataset


def folder_cfg(path: Path, *overrides: str):
    return make_spec(["dataset=folder", f"dataset.path={path}", *overrides]).dataset


def test_decoded_images_are_kept_for_later_jobs_and_decoded_again_when_a_file_changes(
    image_folder: Path, tmp_path: Path
) -> None:
    first_store = Store(tmp_path / "cache")
    first = load_dataset(folder_cfg(image_folder), 24, first_store)
    assert (first_store.built, first_store.reused) == (2, 0)  # train/ and val/
    store = Store(tmp_path / "cache")
    again = load_dataset(folder_cfg(image_folder), 24, store)
    assert (store.built, store.reused) == (0, 2)
    for a, b in ((first.x_train, again.x_train), (first.y_train, again.y_train), (first.x_val, again.x_val)):
        np.testing.assert_array_equal(a, b)
    photo = sorted((image_folder / "train" / "cat").iterdir())[-1]
    write_image(photo, np.full((40, 40, 3), 255, np.uint8))  # one training image replaced
    store = Store(tmp_path / "cache")
    changed = load_dataset(folder_cfg(image_folder), 24, store)
    assert (store.built, store.reused) == (1, 1)
    assert not np.array_equal(changed.x_train, first.x_train)


def test_many_images_decode_in_processes_to_the_same_arrays(image_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_module, "PROCESSES_FROM", 1)
    processes = load_dataset(folder_cfg(image_folder), 24)
    monkeypatch.setattr(data_module, "PROCESSES_FROM", 10**9)
    threads = load_dataset(folder_cfg(image_folder), 24)
    np.testing.assert_array_equal(processes.x_train, threads.x_train)
    np.testing.assert_array_equal(processes.y_train, threads.y_train)
    assert np.bincount(processes.y_train).tolist() == [8, 8, 8]


def test_images_too_big_for_the_memory_budget_are_refused_before_decoding(image_folder: Path) -> None:
    with pytest.raises(TlsweepError, match=r"30 images .* take .* decoded at 224 px, more than this job's memory"):
        load_dataset(folder_cfg(image_folder), 224, max_bytes=1000)


def test_folder_with_train_and_val(image_folder: Path) -> None:
    data = load_dataset(folder_cfg(image_folder), 24)
    assert data.class_names == ["cat", "dog", "fox"]
    assert data.x_train.shape == (24, 24, 24, 3) and data.x_train.dtype == np.uint8
    assert data.x_val.shape == (6, 24, 24, 3)
    assert np.bincount(data.y_val).tolist() == [2, 2, 2]
    assert not data.skipped


def test_flat_folder_is_split_per_class_reproducibly(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "flat", per_class=10, split=False)
    a = load_dataset(folder_cfg(root, "dataset.validation_split=0.3"), 16)
    b = load_dataset(folder_cfg(root, "dataset.validation_split=0.3"), 16)
    assert np.bincount(a.y_val).tolist() == [3, 3, 3] and len(a.y_train) == 21
    np.testing.assert_array_equal(a.x_val, b.x_val)
    c = load_dataset(folder_cfg(root, "dataset.validation_split=0.3", "seed=1"), 16)
    assert not np.array_equal(a.x_val, c.x_val)


def test_fraction_trains_on_a_subset_of_each_class(image_folder: Path) -> None:
    data = load_dataset(folder_cfg(image_folder, "dataset.fraction=0.5"), 16)
    assert np.bincount(data.y_train).tolist() == [4, 4, 4]
    assert len(data.y_val) == 6  # validation stays whole


def test_image_modes_and_formats_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = make_image_folder(tmp_path / "modes", per_class=4, split=False)
    gray = rng.integers(0, 255, (20, 20), dtype=np.uint8)
    write_image(root / "cat" / "gray.png", gray)
    Image.fromarray(class_image(0, rng)).convert("RGBA").save(root / "cat" / "rgba.png")
    Image.fromarray(class_image(1, rng)).convert("P").save(root / "dog" / "palette.gif")
    Image.fromarray(class_image(1, rng)).save(root / "dog" / "bitmap.BMP")
    Image.fromarray(class_image(2, rng)).convert("CMYK").save(root / "fox" / "cmyk.jpg")
    Image.fromarray((np.arange(400).reshape(20, 20) * 150).astype(np.uint16)).save(root / "fox" / "deep.png")
    data = load_dataset(folder_cfg(root), 16)
    assert len(data.y_train) + len(data.y_val) == 18 and not data.skipped
    assert data.x_train.shape[1:] == (16, 16, 3)
    deep = Image.open(root / "fox" / "deep.png")
    assert deep.mode.startswith("I")  # a real 16-bit image, scaled rather than clipped to white
    all_images = np.concatenate([data.x_train, data.x_val])
    assert not any((img == 255).all() for img in all_images)


def test_corrupt_images_are_skipped_and_counted(image_folder: Path) -> None:
    (image_folder / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = image_folder / "train" / "dog" / "dog_3.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    data = load_dataset(folder_cfg(image_folder), 16)
    assert len(data.skipped) == 2
    assert len(data.y_train) == 23
    assert "skipped 2 unreadable or oversized image(s)" in data.summary()


def test_hidden_files_and_other_files_are_ignored(image_folder: Path) -> None:
    (image_folder / "train" / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "train" / ".cache").mkdir()
    assert load_dataset(folder_cfg(image_folder), 16).class_names == ["cat", "dog", "fox"]


def test_symlink_loop_does_not_hang(image_folder: Path) -> None:
    os.symlink(image_folder / "train" / "cat", image_folder / "train" / "cat" / "loop")
    assert len(load_dataset(folder_cfg(image_folder), 16).y_train) == 24


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: _file(root / "file.jpg"), "is a file, not a folder"),
        (lambda root: _mkdir(root / "empty"), "has no class sub-folders"),
        (lambda root: make_image_folder(root / "one", classes=("cat",), split=False), "only one class folder"),
        (lambda root: _mkdir(make_image_folder(root / "e", split=False) / "zebra"), "class folder 'zebra'"),
        (lambda root: _mismatch(make_image_folder(root / "m")), "class folders of"),
        (lambda root: _all_corrupt(make_image_folder(root / "c", split=False)), "no image of class 'dog'"),
    ],
)
def test_bad_folders_fail_with_a_clear_message(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(TlsweepError, match=message):
        load_dataset(folder_cfg(make(tmp_path)), 16)


def _file(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path.parent if path.name == "zebra" else path


def _mismatch(root: Path) -> Path:
    (root / "val" / "fox").rename(root / "val" / "wolf")
    return root


def _all_corrupt(root: Path) -> Path:
    for f in (root / "dog").iterdir():
        f.write_bytes(b"garbage")
    return root


def test_digits_demo_targets_classes_the_tiny_backbone_never_saw() -> None:
    assert not set(DIGITS_SOURCE_CLASSES) & set(DIGITS_TARGET_CLASSES)
    data = load_dataset(make_spec().dataset, 32)
    assert data.class_names == ["5", "6", "7", "8", "9"]
    assert data.x_train.shape[1:] == (32, 32, 3) and len(data.y_train) + len(data.y_val) + len(data.y_test) > 850
    assert len(data.y_test) > 100 and set(data.y_test.tolist()) == set(range(5))  # held out for the final test


def test_test_split_holds_out_images_the_search_never_sees(image_folder: Path) -> None:
    data = load_dataset(folder_cfg(image_folder, "dataset.test_split=0.25"), 16)
    whole = load_dataset(folder_cfg(image_folder), 16)
    assert whole.y_test is None
    assert len(data.y_train) + len(data.y_test) == len(whole.y_train) and len(data.y_val) == len(whole.y_val)
    assert np.bincount(data.y_test).tolist() == [2, 2, 2]  # a quarter of each class's 8 training images
    held_out = {x.tobytes() for x in data.x_test}
    assert not held_out & {x.tobytes() for x in data.x_train} and not held_out & {x.tobytes() for x in data.x_val}


def test_a_test_folder_is_the_test_set(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    make_image_folder(root / "test", per_class=4, split=False, seed=1)
    data = load_dataset(folder_cfg(root, "dataset.test_split=0.5"), 16)  # the folder wins over the split
    assert np.bincount(data.y_test).tolist() == [4, 4, 4] and len(data.y_train) == 24


def test_a_test_folder_with_other_classes_is_one_clear_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    make_image_folder(tmp_path / "other", classes=("cat", "dog", "owl"), per_class=2, split=False)
    with pytest.raises(TlsweepError, match="differ"):
        load_dataset(folder_cfg(root, f"dataset.test={tmp_path / 'other'}"), 16)


def test_tf_flowers_through_tfds_mock_data() -> None:
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        data = load_dataset(make_spec(["dataset=tf_flowers"]).dataset, 24)
    assert sorted(data.class_names) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert data.x_train.shape[1:] == (24, 24, 3) and len(data.y_val) > 0


def test_tf_flowers_offline_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    import requests

    def no_network(*args, **kwargs):
        raise requests.ConnectionError("network is unreachable")

    monkeypatch.setattr(requests.Session, "request", no_network)
    monkeypatch.setattr(requests.Session, "get", no_network)
    cfg = make_spec(["dataset=tf_flowers", f"dataset.data_dir={tmp_path}"]).dataset
    with pytest.raises(TlsweepError, match="run once on a machine with internet.*dataset=folder"):
        load_dataset(cfg, 24)


def test_batches_cover_every_example_in_an_order_fixed_by_seed_and_epoch() -> None:
    x = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    y = np.arange(10, dtype=np.int32)
    views = [[x], [x + 1]]
    batches = EpochBatches(views, y, 4, shuffle=True, seed=0)

    def epoch(e: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [batches.batch(i, e) for i in range(3)]

    for e in (0, 1):
        seen = []
        for images, labels in epoch(e):
            assert images.dtype.name == "float32" and images.shape[1:] == (4, 4, 3)
            np.testing.assert_array_equal(images.astype(np.uint8), views[e][0][labels])  # epoch e reads view e
            seen += labels.tolist()
        assert sorted(seen) == list(range(10))
    orders = [np.concatenate([labels for _, labels in epoch(e)]).tolist() for e in (0, 1, 0)]
    assert orders[0] == orders[2] != orders[1]  # the same epoch, the same order; the next epoch, another
    ds = EpochBatches([[x]], y, 4, shuffle=False, seed=0).dataset()
    assert [labels.numpy().tolist() for _, labels in ds] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_pipeline_gives_the_same_batches_from_memory_and_from_a_memory_mapped_file(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((10, 3, 5)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    y = np.arange(10, dtype=np.int32)
    sources = {
        "memory": EpochBatches([[x, x[:, 0]], [x + 1, x[:, 1]]], y, 4, shuffle=True, seed=3),
        "memory-mapped": EpochBatches(
            [[np.load(tmp_path / "x.npy", mmap_mode="r"), x[:, 0]], [x + 1, x[:, 1]]], y, 4, True, 3
        ),
        "read from disk": EpochBatches([[DiskArray(tmp_path / "x.npy"), x[:, 0]], [x + 1, x[:, 1]]], y, 4, True, 3),
    }
    for source in sources.values():
        ds, set_epoch = source.dataset(), source.callback()
        for epoch in (0, 1, 0):
            set_epoch.on_epoch_begin(epoch)  # as fit does before each epoch
            for i, ((a, b), labels) in enumerate(ds):
                (want_a, want_b), want_labels = source.batch(i, epoch)
                np.testing.assert_array_equal(labels.numpy(), want_labels)
                np.testing.assert_array_equal(a.numpy(), want_a)
                np.testing.assert_array_equal(b.numpy(), want_b)
                assert a.dtype.name == "float32"


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def test_fixed_order_batches_are_the_same_every_epoch_and_float32() -> None:
    x = np.random.default_rng(1).random((10, 3)).astype(np.float32)
    y = np.arange(10, dtype=np.int32)
    for arrays in ([x], [x, x[:, :1]], [(x * 255).astype(np.uint8)]):  # cached tensors; validation images
        source = EpochBatches([arrays], y, 4, shuffle=False, seed=0)
        for epoch in (0, 3):
            source.set_epoch(epoch)
            batches = list(source.dataset())
            assert len(batches) == source.steps == 3
            for i, (got, labels) in enumerate(batches):
                want, want_labels = source.batch(i, epoch)
                np.testing.assert_array_equal(labels.numpy(), want_labels)
                for a, b in zip(_as_tuple(got), _as_tuple(want), strict=True):
                    assert a.dtype.name == "float32"
                    np.testing.assert_array_equal(a.numpy(), b)


def test_fit_trains_each_epoch_on_that_epochs_batches(tmp_path: Path) -> None:
    """Keras makes the next epoch's iterator before the epoch begins; it must still read that epoch."""
    import keras
    import tensorflow as tf

    x = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    y = np.arange(10, dtype=np.int32)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Recorder(keras.Model):
        def train_step(self, data):
            (a, _), labels = data
            tf.py_function(lambda a, labels: seen.append((a.numpy(), labels.numpy())), [a, labels], [])
            return {"batch": tf.shape(labels)[0]}

    for views in ([[x, x]], [[x, x], [x + 1, x]], [[np.load(tmp_path / "x.npy", mmap_mode="r"), x], [x + 1, x]]):
        source = EpochBatches(views, y, 4, shuffle=True, seed=5)  # 3 batches an epoch, the last one short
        model = Recorder()
        model.compile(steps_per_execution=2)  # an epoch's batches in two compiled runs
        seen.clear()
        model.fit(
            source.dataset(),
            initial_epoch=2,
            epochs=5,
            steps_per_epoch=source.steps,
            callbacks=[source.callback()],
            verbose=0,
        )
        wanted = [source.batch(i, epoch) for epoch in (2, 3, 4) for i in range(source.steps)]
        assert len(seen) == len(wanted)
        for (a, labels), ((want_a, _), want_labels) in zip(seen, wanted, strict=True):
            np.testing.assert_array_equal(labels, want_labels)
            np.testing.assert_array_equal(a, want_a)
