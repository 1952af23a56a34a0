"""Bad input, table-driven: each case gets its one-line message and exit code, no traceback, no hang,
and earlier outputs are left exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import class_image, make_image_folder, run_cli, write_image
from PIL import Image

pytestmark = pytest.mark.slow

QUICK = [
    "dataset.image_size=16",
    "finetune.batch_size=8",
    "finetune=none",
    "finetune.head_epochs=1",
    "tuner.max_trials=1",
    "verbose=false",
    "report.enabled=false",
    "export.enabled=false",
]
TINY_WEIGHTS = Path(__file__).resolve().parents[1] / "tlsweep" / "weights" / "tiny.weights.h5"


def folder(root: Path, **kwargs) -> Path:
    return make_image_folder(root / "images", **kwargs)


def with_file_instead(root: Path) -> Path:
    (root / "images.jpg").write_bytes(b"x")
    return root / "images.jpg"


def without_class_folders(root: Path) -> Path:
    write_image(root / "images" / "a.png", class_image(0, np.random.default_rng(0)))
    return root / "images"


def with_empty_class(root: Path) -> Path:
    images = folder(root)
    for f in (images / "train" / "dog").iterdir():
        f.unlink()
    return images


def with_different_val_classes(root: Path) -> Path:
    images = folder(root)
    (images / "val" / "dog").rename(images / "val" / "wolf")
    return images


def with_every_oddity(root: Path) -> Path:
    """Class names with spaces and HTML, a corrupt JPEG and a truncated PNG (skipped), a 1×1 image, a 16-bit
    PNG and a CMYK JPEG (read), a non-UTF-8 file name (read) and a symlink loop (not followed)."""
    images = folder(root, classes=("snow leopard", "<b>x<i>", "fox & hound"))
    cat, dog, fox = (images / "train" / name for name in ("snow leopard", "<b>x<i>", "fox & hound"))
    (cat / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = next(dog.glob("*.png")).read_bytes()
    (dog / "cut.png").write_bytes(png[: len(png) // 2])
    write_image(cat / "dot.png", np.full((1, 1, 3), 200, np.uint8))
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(cat / "deep.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(fox / "print.jpg")
    with open(os.fsencode(cat) + b"/caf\xe9.png", "wb") as f:  # Latin-1, not UTF-8
        Image.fromarray(class_image(0, np.random.default_rng(1))).save(f, format="PNG")
    os.symlink(images / "train", cat / "loop")
    return images


# (name, make the dataset folder or None, extra args, exit code, text that must be in the output)
CASES: list[tuple[str, Callable[[Path], Path] | None, list[str], int, str]] = [
    ("missing folder", None, ["dataset.path=no/such/folder"], 1, "dataset.path no/such/folder does not exist"),
    ("a file, not a folder", with_file_instead, [], 1, "is a file, not a folder"),
    ("no class folders", without_class_folders, [], 1, "has no class sub-folders"),
    ("one class", lambda r: folder(r, classes=("cat",), split=False), [], 1, "only one class folder ('cat')"),
    ("empty class", with_empty_class, [], 1, "class folder 'dog' in"),
    ("train and val classes differ", with_different_val_classes, [], 1, "differ (dog, wolf)"),
    (
        "every oddity a real folder has, in one",
        with_every_oddity,
        [],
        0,
        "3 classes, 28 training and 6 validation images; skipped 2 unreadable or oversized image(s)",
    ),
    ("missing weights file", folder, ["backbone.weights=nope.weights.h5"], 1, "nope.weights.h5 does not exist"),
    (
        "weights of another backbone",
        folder,
        ["backbone=mobilenet_v2", f"backbone.weights={TINY_WEIGHTS}", "dataset.image_size=32"],
        1,
        "does not fit this backbone",
    ),
    ("an image size the backbone refuses", folder, ["backbone=mobilenet_v2"], 1, "cannot take 16 px images"),
    ("a word for a number", folder, ["finetune.lr_scale=abc"], 1, "could not be converted to Float"),
    ("max_trials=0", folder, ["tuner.max_trials=0"], 1, "tuner.max_trials=0 must be at least 1"),
    ("unknown option", folder, ["backbone=resnett"], 1, "Could not find 'backbone/resnett'; options: bert_tiny, clip"),
    ("unknown group", folder, ["backbon=tiny"], 1, "unknown config key backbon; did you mean backbone?"),
    ("a typo behind +", folder, ["+tuner.max_trail=3"], 1, "did you mean tuner.max_trials?"),
    ("a negative seed", folder, ["seed=-1"], 1, "seed=-1 must be a whole number"),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name,make,args,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path: Path, name: str, make, args: list[str], code: int, message: str) -> None:
    earlier = tmp_path / "outputs" / "runs" / "2026-01-01_00-00-00"
    (earlier / "trials").mkdir(parents=True)
    (earlier / "job.json").write_text(json.dumps({"status": "completed"}))
    (earlier / "trials" / "trial_0.json").write_text(
        json.dumps({"trial_id": "0", "status": "completed", "objective": "val_accuracy"})
    )
    before = snapshot(tmp_path / "outputs")

    dataset = ["dataset=folder", f"dataset.path={make(tmp_path)}"] if make else ["dataset=folder"]
    result = run_cli([*dataset, *QUICK, *args], tmp_path, timeout=180)

    assert result.returncode == code, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert message in result.stdout, result.stdout
    if code:
        lines = [line for line in result.stdout.splitlines() if message in line]
        assert lines[0].startswith("error: "), result.stdout
    after = snapshot(tmp_path / "outputs")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing earlier changed or vanished
    runs = {p.name for p in (tmp_path / "outputs" / "runs").iterdir()}
    assert code == 0 or runs == {earlier.name}  # a refused run leaves no folder behind
