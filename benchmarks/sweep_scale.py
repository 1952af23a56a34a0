"""The feature cache at real dataset sizes: memory, disk and time of the flowers preset's search.

From the 500 photos in ../shared/data/flowers-mini it builds larger datasets (each photo
re-cropped, maybe flipped and re-encoded as a new JPEG, keeping its class; 80/20 train/val in
``train/`` and ``val/``), then runs, each job in its own process with an empty feature cache:

- 3,000 images: the flowers preset's search (MobileNetV2 with the shared weights at 160 px,
  ``augmentation=standard``, 10 trials of 5 + 5 epochs, depths 0/12/30/54, Adam and SGD) with the
  cache; the whole job as its defaults run it (that search, then its finalists); the plain way
  (``cache=false``) on 2 trials, its time scaled to 10; the search head-only
  (``search.params.finetune.unfreeze_depth=0``), with augmentation (default views) and without; the search again
  with one augmented view per epoch (``feature_cache.views=5``, not the default). The floor, one cold
  forward pass over every image, is measured before, between and after these runs: the machine's
  speed drifts, so each ratio is also given with each side in units of the floor measured around it.
- 20,000 images: 3 trials of 2 + 2 epochs, with the default memory budget and with
  ``feature_cache.memory_gb=4`` (the second reuses the decoded images and the cache).

For each run it prints the peak resident memory of the job's process tree, the cache folder's
size on disk, the wall time and the best validation accuracy (the whole job's: its winner's mean over
seeds). Finalists and pruning are off (``finalists.top=0 pruning=none``) but in the whole job: there the
searches alone are compared, every trial to its end.

    python benchmarks/sweep_scale.py [--sizes 3000 20000] [--work DIR] [--whole-job]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "data" / "flowers-mini"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_no_top.weights.h5"
MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("PEAK_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def build_dataset(size: int, folder: Path, seed: int = 0) -> None:
    """``size`` images made from the flower photos: random crops (60-100% of each side), half of them
    flipped, re-encoded at JPEG quality 85-95; 80% in train/, 20% in val/."""
    from PIL import Image

    sources = sorted(p for p in FLOWERS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = random.Random(seed)
    for i in range(size):
        source = sources[i % len(sources)]
        label = source.parent.name
        split = "val" if rng.random() < 0.2 else "train"
        with Image.open(source) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im = im.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out = folder / split / label / f"{i:06d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            im.save(out, quality=rng.randint(85, 95))


def preset(dataset: Path, trials: int, head: int, finetune: int, finalists: bool = False) -> list[str]:
    """The flowers preset's search on a folder, with the shared weights, every trial to its end (the cache's
    effect alone); with ``finalists``, the whole job as its defaults run it (ASHA pruning, then the top 3
    configurations over 3 seeds)."""
    return [
        "dataset=folder",
        f"dataset.path={dataset}",
        "backbone=mobilenet_v2",
        f"backbone.weights={WEIGHTS}",
        "dataset.image_size=160",
        "augmentation=standard",
        f"tuner.max_trials={trials}",
        f"finetune.head_epochs={head}",
        f"finetune.finetune_epochs={finetune}",
        *([] if finalists else ["finalists.top=0", "pruning=none"]),
        "verbose=false",
        "report.enabled=false",
        "export.enabled=false",
    ]


def run(name: str, args: list[str], work: Path, cache: Path | None = None) -> dict:
    """One job in a fresh folder: peak memory of its processes, cache size, wall time, best accuracy."""
    folder = work / name
    folder.mkdir()
    cache = cache or folder / "cache"
    started = time.perf_counter()
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "tlsweep", *args, f"feature_cache.dir={cache}"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_KB"))
    (record,) = [json.loads(p.read_text()) for p in folder.glob("outputs/runs/*/job.json")]
    (log_file,) = folder.glob("outputs/runs/*/tlsweep.log")
    plan = next((line.split("] ", 1)[1] for line in log_file.read_text().splitlines() if "cut(s)," in line), "")
    disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    return {
        "wall": wall,
        "search": record["search_s"],
        "trials": record["completed_trials"],
        "best": record["best"]["value"],
        "peak_gb": peak / 2**20,
        "disk_gb": disk / 2**30,
        "plan": plan,
    }


def floor(dataset: Path) -> None:
    """Print the seconds of one forward pass over every image (decoding not included), in this process."""
    from tlsweep.cache.features import FeatureCache
    from tlsweep.cache.store import Store
    from tlsweep.config import compose_spec
    from tlsweep.paths import register_resolvers
    from tlsweep.tasks.images.backbones import load_backbone
    from tlsweep.tasks.images.data import load_images as load_dataset

    register_resolvers()
    cfg = compose_spec(preset(dataset, 1, 1, 1))
    data = load_dataset(cfg.dataset, 160)
    backbone = load_backbone(cfg.backbone, 160)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(backbone, data, None, 1, 0, Store(Path(tmp)))
        started = time.perf_counter()
        cache.compute(0, "train", 0)
        cache.compute(0, "val", 0)
        print(json.dumps({"floor": time.perf_counter() - started}))


def floor_pass(dataset: Path) -> float:
    """The floor measured in a process of its own, as the jobs run."""
    command = [sys.executable, __file__, "--floor", str(dataset)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["floor"]


def floor_units(seconds: float, floors: list[float], run: int) -> float:
    """``seconds`` in units of the floor: the mean of the floors measured just before and after run ``run``."""
    return seconds / ((floors[run] + floors[run + 1]) / 2)


def same_trials(runs: Path, first: str = "cached", second: str = "plain") -> str:
    """The ``second`` run's trials beside the same trials (same values, same seed) of the ``first``."""

    def best(name: str) -> dict[str, float]:
        found = {}
        for path in (runs / name).glob("outputs/runs/*/trials/trial_*.json"):
            record = json.loads(path.read_text())
            if record.get("status") == "completed":
                key = json.dumps(record["hyperparameters"], sort_keys=True)
                found[key] = max(e["val_accuracy"] for e in record["history"])
        return found

    ours, theirs = best(first), best(second)
    return ", ".join(f"{ours[k]:.3f} / {v:.3f}" for k, v in theirs.items() if k in ours)


def line(name: str, r: dict) -> str:
    return (
        f"  {name:34s} peak {r['peak_gb']:5.1f} GB  cache {r['disk_gb']:5.1f} GB  wall {r['wall']:7.1f} s  "
        f"search {r['search']:7.1f} s  best val_accuracy {r['best']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--work", type=Path, default=None, help="where datasets and runs go (default: a temp folder)")
    parser.add_argument("--whole-job", action="store_true", help="3,000 images: only the whole job and the plain way")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # the floor's own process
    options = parser.parse_args()
    if options.floor:
        floor(options.floor)
        return
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"needs the flower photos and MobileNetV2 weights in {SHARED}")
    work = options.work or Path(tempfile.mkdtemp(prefix="tlsweep-scale-"))
    print(f"working in {work} (machine: {_machine()})", flush=True)
    for size in options.sizes:
        dataset = work / f"flowers-{size}"
        if not dataset.exists():
            started = time.perf_counter()
            build_dataset(size, dataset)
            print(f"{size} images built in {time.perf_counter() - started:.0f} s", flush=True)
        runs = work / f"runs-{size}"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir()
        if size <= 5000 and options.whole_job:
            whole_job(dataset, runs)
        elif size <= 5000:
            args = preset(dataset, 10, 5, 5)
            # the machine's speed drifts by a third over an hour: the floor is measured between the runs compared
            floors = [floor_pass(dataset)]
            cached = run("cached", args, runs)
            print(line("cache=true, 10 trials", cached), flush=True)
            print(f"    {cached['plan']}", flush=True)
            floors.append(floor_pass(dataset))
            whole, plain = whole_and_plain(dataset, runs, floors)
            head_only = run("head_only", [*args, "search.params.finetune.unfreeze_depth=0"], runs)
            print(line("cache=true, head only, 10 trials", head_only), flush=True)
            print(f"    {head_only['plan']}", flush=True)
            head_none = [*args, "search.params.finetune.unfreeze_depth=0", "augmentation=none"]
            one_view = run("head_only_none", head_none, runs)
            print(line("  the same, augmentation=none", one_view), flush=True)
            floors.append(floor_pass(dataset))
            every_epoch = run("views_5", [*args, "feature_cache.views=5"], runs)
            print(line("cache=true, one view per epoch", every_epoch), flush=True)
            plain10 = plain["search"] * 10 / plain["trials"]
            print(f"  the plain way scaled to 10 trials: search {plain10:.0f} s")
            print(f"  speed-up of the cache (search): {plain10 / cached['search']:.1f}x")
            print(
                f"  floor, one cold forward pass over all {size} images, before the cached search, after it, after "
                "the whole job, after the plain way and after the head-only searches: "
                + ", ".join(f"{f:.1f} s" for f in floors)
            )
            scaled = floor_units(plain10, floors, 2) / floor_units(cached["search"], floors, 0)
            print(f"  speed-up with each side in units of the floor measured around it: {scaled:.1f}x")
            whole_scaled = floor_units(plain10, floors, 2) / floor_units(whole["search"], floors, 1)
            print(
                "  the whole job (cache, search and finalists) against 10 plain trials: "
                f"{plain10 / whole['search']:.1f}x, {whole_scaled:.1f}x in units of the floor around each; "
                f"its winner {whole['best']:.3f}"
            )
            print(f"  the same trials both ways, best val_accuracy cached / plain: {same_trials(runs)}")
            echo = same_trials(runs, "cached", "views_5")
            print(f"  the same trials with 5 views, best val_accuracy default views / 5 views: {echo}")
            views = int(head_only["plan"].split(" view(s)")[0].rsplit(" ", 1)[-1])
            print(
                f"  head-only cached search: {floor_units(head_only['search'], floors, 3):.1f}x the floor around it "
                f"with {views} augmented views, {floor_units(one_view['search'], floors, 3):.1f}x with "
                "augmentation=none (one view)",
                flush=True,
            )
        else:
            args = preset(dataset, 3, 2, 2)
            default = run("default_budget", args, runs)
            print(line("cache=true, 3 trials, default budget", default), flush=True)
            print(f"    {default['plan']}", flush=True)
            reuse = runs / "default_budget" / "cache"
            small = run("memory_gb_4", [*args, "feature_cache.memory_gb=4"], runs, cache=reuse)
            print(line("cache=true, 3 trials, memory_gb=4", small), flush=True)
            print(f"    {small['plan']}", flush=True)


def whole_and_plain(dataset: Path, runs: Path, floors: list[float]) -> tuple[dict, dict]:
    """The whole job as its defaults run it, then the plain way on 2 trials, each followed by a floor."""
    whole = run("whole_job", preset(dataset, 10, 5, 5, finalists=True), runs)
    print(line("the whole job: 10 trials, finalists", whole), flush=True)
    floors.append(floor_pass(dataset))
    plain = run("plain", [*preset(dataset, 2, 5, 5), "cache=false"], runs)
    print(line("cache=false, 2 trials", plain), flush=True)
    floors.append(floor_pass(dataset))
    return whole, plain


def whole_job(dataset: Path, runs: Path) -> None:
    """The whole job (cache, search, finalists) against 10 plain trials, the floor measured around each."""
    floors = [floor_pass(dataset)]
    whole, plain = whole_and_plain(dataset, runs, floors)
    plain10 = plain["search"] * 10 / plain["trials"]
    print(f"  the plain way scaled to 10 trials: search {plain10:.0f} s")
    print("  floor before, between and after: " + ", ".join(f"{f:.1f} s" for f in floors))
    scaled = floor_units(plain10, floors, 1) / floor_units(whole["search"], floors, 0)
    print(
        f"  the whole job against 10 plain trials: {plain10 / whole['search']:.1f}x, {scaled:.1f}x in units of the "
        f"floor around each; its winner {whole['best']:.4f}",
        flush=True,
    )


def _machine() -> str:
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB"


if __name__ == "__main__":
    main()
