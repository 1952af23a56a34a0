"""The feature cache against the plain way: the same KerasTuner search, side by side, in one run.

On the flower photos in ../shared (400 training and 100 validation images) with MobileNetV2 and
its pretrained weights at 160 px, a random search over learning rate, Adam/SGD and unfreeze
depth 0/10/20 (both stages) runs with cache=false and with cache=true (from an empty cache),
each job in its own process. By default it is the flowers preset's search: 10 trials of 5 + 5
epochs (``--trials``, ``--epochs HEAD FINETUNE`` change it). Also timed: the same search head-only
(finetune=none) with the cache, and the floor: one forward pass of the frozen backbone over all
images in a fresh process, as any search must make at least once (tracing and first-run kernel
set-up included; the pass repeated in the same process, warm, is printed too).

    python benchmarks/sweep_speed.py [--trials 10] [--epochs 5 5] [--repeat 3]

For each search it prints the process's wall time, the job's time (its record: images, backbone,
cache and search, without Python start-up) and the search's (cache included, without loading
images and backbone), the ratios, and each best validation accuracy. Run-to-run noise on a shared
machine is around 10%, so the short runs (cached, head-only, floor) are repeated ``--repeat``
times and their medians are compared, with the spread shown; the plain search runs once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep_scale import FLOWERS, SHARED, WEIGHTS  # the shared photos and weights, beside the repository

DATA = [
    "dataset=folder",
    f"dataset.path={FLOWERS}",
    "backbone=mobilenet_v2",
    f"backbone.weights={WEIGHTS}",
    "dataset.image_size=160",
]


def search_args(trials: int, head: int, finetune: int) -> list[str]:
    return [
        *DATA,
        f"tuner.max_trials={trials}",
        "search.params.finetune.unfreeze_depth=choice(0, 10, 20)",
        "search.params.finetune.optimizer=choice(adam, sgd)",
        f"finetune.head_epochs={head}",
        f"finetune.finetune_epochs={finetune}",
        "finalists.top=0",  # the search alone, both ways: finalists would add the same extra runs to each
        "verbose=false",
        "report.enabled=false",
        "export.enabled=false",
    ]


def sweep(name: str, args: list[str], work: Path) -> dict:
    """Run one search in a fresh folder (and a fresh feature cache): wall, job and search times, best."""
    folder = work / name
    folder.mkdir()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=folder, check=True, capture_output=True)
    wall = time.perf_counter() - started
    (record,) = [json.loads(p.read_text()) for p in folder.glob("outputs/runs/*/job.json")]
    return {"wall": wall, "job": record["duration_s"], "search": record["search_s"], "best": record["best"]["value"]}


def floor() -> None:
    """Print the seconds of one forward pass over every training and validation image, cold then warm."""
    from tlsweep.cache.features import FeatureCache
    from tlsweep.cache.store import Store
    from tlsweep.config import compose_spec
    from tlsweep.paths import register_resolvers
    from tlsweep.tasks.images.backbones import load_backbone
    from tlsweep.tasks.images.data import load_images as load_dataset

    register_resolvers()
    cfg = compose_spec(DATA)
    data = load_dataset(cfg.dataset, 160)
    backbone = load_backbone(cfg.backbone, 160)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(backbone, data, None, 1, 0, Store(Path(tmp)))
        for _ in range(2):
            started = time.perf_counter()
            cache.compute(0, "train", 0)
            cache.compute(0, "val", 0)
            times.append(time.perf_counter() - started)
    print(json.dumps({"cold": times[0], "warm": times[1]}))


def median_run(runs: list[dict]) -> dict:
    """Each measure's median over repeated runs, and its spread (min, max)."""
    keys = runs[0].keys()
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["spread"] = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("HEAD", "FINETUNE"))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each short measurement (medians compared)")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)  # the floor's own process
    options = parser.parse_args()
    if options.floor:
        floor()
        return
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"needs the flower photos and MobileNetV2 weights in {SHARED}")
    args = search_args(options.trials, *options.epochs)
    repeat = range(options.repeat)
    floors = []
    for _ in repeat:
        run = subprocess.run([sys.executable, __file__, "--floor"], check=True, capture_output=True, text=True)
        floors.append(json.loads(run.stdout.strip().splitlines()[-1]))
    passes = median_run(floors)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = median_run([sweep("plain", [*args, "cache=false"], work)])
        cached = median_run([sweep(f"cached{i}", [*args, "cache=true"], work) for i in repeat])
        head_only = median_run([sweep(f"head_only{i}", [*args, "cache=true", "finetune=none"], work) for i in repeat])
    head, finetune = options.epochs
    print(
        f"{options.trials}-trial search, {head} + {finetune} epochs, unfreeze depths 0/10/20, Adam and SGD, "
        f"MobileNetV2 at 160 px, 400 + 100 flower photos (cached runs: median of {options.repeat}):"
    )
    for name, r in (("cache=false", plain), ("cache=true", cached), ("cache=true, head only", head_only)):
        print(
            f"  {name:22s} wall {r['wall']:6.1f} s   job {r['job']:6.1f} s   search {r['search']:6.1f} s   "
            f"best val_accuracy {r['best']:.3f}"
        )
    for name, r in (("cache=true", cached), ("cache=true, head only", head_only)):
        spread = r["spread"]["search"]
        print(f"  {name} search, fastest to slowest run: {spread[0]:.1f} to {spread[1]:.1f} s")
    ratios = {k: plain[k] / cached[k] for k in ("wall", "job", "search")}
    print("  speed-up of the cache: " + ", ".join(f"{v:.1f}x {k}" for k, v in ratios.items()))
    print(f"  best accuracy, cached minus plain: {100 * (cached['best'] - plain['best']):+.1f} points")
    cold, warm = passes["spread"]["cold"], passes["spread"]["warm"]
    print(
        f"  floor, one forward pass over all 500 images: {passes['cold']:.1f} s in a fresh process "
        f"({cold[0]:.1f} to {cold[1]:.1f} s); {passes['warm']:.1f} s repeated, warm ({warm[0]:.1f} to {warm[1]:.1f} s)"
    )
    print(
        f"  head-only cached search: {head_only['search'] / passes['cold']:.1f}x the floor "
        f"({head_only['search'] / passes['warm']:.1f}x the warm pass)"
    )


if __name__ == "__main__":
    main()
