"""The feature cache against the plain way: the same KerasTuner search, side by side, in one run.

On the flower photos in ../shared (400 training and 100 validation images) with MobileNetV2 and
its pretrained weights at 160 px, a 6-trial search over learning rate, Adam/SGD and unfreeze
depth 0/10/20 (both stages) runs with cache=false and with cache=true (from an empty cache).
Also timed: the same search head-only (finetune=none) with the cache, and one forward pass of the
backbone over all images, the least any search must spend.

    python benchmarks/sweep_speed.py

Prints wall time and search time (the job's own record, without process start-up) of each, the
ratio, each best validation accuracy, and the floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "data" / "flowers-mini"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_no_top.weights.h5"
SEARCH = [
    "dataset=folder",
    f"dataset.path={FLOWERS}",
    "backbone=mobilenet_v2",
    f"backbone.weights={WEIGHTS}",
    "dataset.image_size=160",
    "tuner.max_trials=6",
    "search.unfreeze_depths=[0,10,20]",
    "search.optimizers=[adam,sgd]",
    "finetune.head_epochs=3",
    "finetune.finetune_epochs=2",
    "verbose=false",
    "report.enabled=false",
    "export.enabled=false",
]


def sweep(name: str, args: list[str], work: Path) -> dict:
    """Run one search in a fresh folder (and a fresh feature cache); its wall time, search time, best."""
    folder = work / name
    folder.mkdir()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=folder, check=True, capture_output=True)
    wall = time.perf_counter() - started
    (record,) = [json.loads(p.read_text()) for p in folder.glob("outputs/runs/*/job.json")]
    return {"wall": wall, "search": record["duration_s"], "best": record["best"]["value"]}


def forward_pass_floor() -> float:
    """Seconds for one forward pass of the frozen backbone over every training and validation image."""
    from hydra import compose, initialize_config_module

    from tlsweep.backbones import load_backbone
    from tlsweep.cache import FeatureCache, Store
    from tlsweep.config import register_resolvers
    from tlsweep.data import load_dataset

    register_resolvers()
    with initialize_config_module("tlsweep.conf", version_base="1.3"):
        cfg = compose("config", overrides=SEARCH)
    data = load_dataset(cfg.dataset, 160)
    backbone = load_backbone(cfg.backbone, 160)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(backbone, data, None, 1, 0, Store(Path(tmp)))
        cache._compute(0, "train", 0, None)  # warm-up: graph tracing
        started = time.perf_counter()
        cache._compute(0, "train", 0, None)
        cache._compute(0, "val", 0, None)
        return time.perf_counter() - started


def main() -> None:
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"needs the flower photos and MobileNetV2 weights in {SHARED}")
    floor = forward_pass_floor()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = sweep("plain", [*SEARCH, "cache=false"], work)
        cached = sweep("cached", [*SEARCH, "cache=true"], work)
        head_only = sweep("head_only", [*SEARCH, "cache=true", "finetune=none"], work)
    print("6-trial search, both stages, unfreeze depths 0/10/20, Adam and SGD, MobileNetV2 at 160 px:")
    for name, r in (("cache=false", plain), ("cache=true", cached), ("cache=true, head only", head_only)):
        print(f"  {name:22s} wall {r['wall']:7.1f} s   search {r['search']:7.1f} s   best val_accuracy {r['best']:.3f}")
    wall_ratio, search_ratio = plain["wall"] / cached["wall"], plain["search"] / cached["search"]
    print(f"  speed-up of the cache: {wall_ratio:.1f}x wall, {search_ratio:.1f}x search")
    print(f"  one forward pass of the backbone over all 500 images (the floor): {floor:.1f} s")
    print(f"  head-only cached search: {head_only['search'] / floor:.1f}x the floor")
    print(f"  best accuracy, cached minus plain: {100 * (cached['best'] - plain['best']):+.1f} points")


if __name__ == "__main__":
    main()
