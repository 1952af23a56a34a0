"""Pruning against the full search: the same 30 trials with pruning=none, median and asha, in one run.

On the 3,000-image set of ``benchmarks/sweep_scale.py`` (built from the flower photos in
../shared if it is not there yet), MobileNetV2 with the shared weights at 160 px, the flowers
preset's search (``augmentation=standard``, 5 + 5 epochs, Adam and SGD, unfreeze depths from
``--depths``), 30 trials, the same seed. The feature cache is built once, before the three
searches, so each is timed on the same footing: trials only. The floor of ``sweep_scale`` (one cold
forward pass over every image) is measured before, between and after the searches: the machine's
speed drifts, so each share is also given with each search in units of the floor around it.

For each rule it prints the search's time, the trials completed and pruned, and the best
validation accuracy with its 95% (Wilson) interval; then each pruned search's time as a share of
the unpruned one's, and whether its best lies inside the unpruned best's interval.

    python benchmarks/pruning.py [--trials 30] [--depths 0 12 30 54] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep_scale import FLOWERS, WEIGHTS, build_dataset, floor_pass, floor_units, preset

RULES = ("none", "median", "asha")


def run(name: str, args: list[str], work: Path) -> dict:
    """One job in its own folder and process; its record, and its trials' statuses."""
    folder = work / name
    folder.mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=folder, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (job,) = folder.glob("outputs/runs/*")
    record = json.loads((job / "job.json").read_text())
    statuses = [json.loads(p.read_text())["status"] for p in (job / "trials").glob("trial_*.json")]
    return {
        "wall": time.perf_counter() - started,
        "search": record["search_s"],
        "completed": statuses.count("completed"),
        "pruned": statuses.count("pruned"),
        "best": record["best"]["value"],
        "val_images": record["val_images"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 12, 30, 54])
    parser.add_argument("--work", type=Path, help="where the dataset and runs go (default: a temp folder)")
    options = parser.parse_args()
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"needs the flower photos and MobileNetV2 weights in {FLOWERS.parents[1]}")
    from tlsweep.report.summary import accuracy_interval

    work = options.work or Path(tempfile.mkdtemp(prefix="tlsweep-pruning-"))
    dataset = work / "flowers-3000"
    if not dataset.exists():
        build_dataset(3000, dataset)
    runs = work / "pruning-runs"
    cache = runs / "cache"
    depths = f"search.params.finetune.unfreeze_depth=choice({', '.join(str(d) for d in options.depths)})"
    args = [*preset(dataset, options.trials, 5, 5), depths, f"feature_cache.dir={cache}", "seed=0"]
    print(f"working in {runs}; {options.trials} trials of 5 + 5 epochs, depths {options.depths}", flush=True)
    started = time.perf_counter()
    run("warm-up", [*args, "tuner.max_trials=1"], runs)  # builds the feature cache the three searches share
    print(f"  feature cache built in {time.perf_counter() - started:.0f} s (not counted below)", flush=True)
    results, floors = {}, [floor_pass(dataset)]
    for i, rule in enumerate(RULES):
        r = results[rule] = run(rule, [*args, f"pruning={rule}"], runs)
        floors.append(floor_pass(dataset))
        r["units"] = floor_units(r["search"], floors, i)
        low, high = accuracy_interval(r["best"], r["val_images"])
        print(
            f"  pruning={rule:6s}  search {r['search']:7.1f} s  {r['completed']:2d} completed, {r['pruned']:2d} pruned"
            f"  best val_accuracy {r['best']:.3f} (95% interval {low:.3f}-{high:.3f})",
            flush=True,
        )
    measured = ", ".join(f"{f:.1f} s" for f in floors)
    print(f"  floor, one cold forward pass over every image, before, between and after the searches: {measured}")
    base = results["none"]
    low, high = accuracy_interval(base["best"], base["val_images"])
    for rule in RULES[1:]:
        r = results[rule]
        inside = "inside" if low <= r["best"] <= high else "outside"
        share = r["search"] / base["search"]
        scaled = r["units"] / base["units"]
        print(
            f"  pruning={rule}: {share:.0%} of the unpruned search's time ({scaled:.0%} in units of the floor "
            f"around each); best {inside} the unpruned interval"
        )


if __name__ == "__main__":
    main()
