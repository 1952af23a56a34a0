"""Real transfer learning: pretrained MobileNetV2 on real flower photos beats chance by far."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FLOWERS_TRIAL, make_spec, needs_shared

from tlsweep.job import run_job


@needs_shared
def test_mobilenet_v2_on_flower_photos(tmp_path: Path) -> None:
    cfg = make_spec(
        [
            *FLOWERS_TRIAL,
            "augmentation=light",
            "finetune.head_epochs=3",
            "finetune.finetune_epochs=1",
            "search.params.finetune.unfreeze_depth=10",
        ]
    )
    record = run_job(cfg, tmp_path / "job", {"backbone": "mobilenet_v2", "dataset": "folder"})
    assert record.get("classes") == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (record.get("train_images"), record.get("val_images")) == (400, 100)
    assert record.get("best")["value"] > 0.6  # chance is 0.2
    trial = json.loads(next((tmp_path / "job" / "trials").glob("*.json")).read_text())
    assert [e["stage"] for e in trial["history"]] == ["head"] * 3 + ["finetune"]
