"""The race sweeper against the full sweep: an 8-job multirun on the 3,000-image set, same seed.

The jobs: MobileNetV2 at 96 and 160 px, ``augmentation=none`` and ``standard``, from the shared
pretrained weights or from random weights (``backbone.weights=null``): 2 × 2 × 2 = 8 jobs of the
flowers preset's search (10 trials of 5 + 5 epochs, depths 0/12/30/54, Adam and SGD, finalists
3 × 3 seeds), each with its own empty feature cache. The same multirun runs twice, with the basic
sweeper and with ``hydra/sweeper=race``, each in its own process; the floor of
``benchmarks/sweep_scale.py`` (one cold forward pass over every image) is measured before, between
and after them. Printed: each side's wall time, trials run, winner and its mean with its interval,
and the race's share of the full sweep's time: by the clock, in units of the floor around each, and
its training work (its runs, each timed as the same run took in the full sweep: the machine's drift
between the two sides does not move it). ``--again`` prints the comparison of the runs in ``--work``.

    python benchmarks/race.py [--work DIR] [--size 3000] [--again]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_scale import FLOWERS, SHARED, WEIGHTS, build_dataset, floor_pass, floor_units  # noqa: E402


def multirun(dataset: Path) -> list[str]:
    return [
        "-m",
        "dataset=folder",
        f"dataset.path={dataset}",
        "backbone=mobilenet_v2",
        f"backbone.weights={WEIGHTS},null",
        "dataset.image_size=96,160",
        "augmentation=none,standard",
        "tuner.max_trials=10",
        "verbose=false",
        "export.enabled=false",
    ]


def sweep(name: str, args: list[str], work: Path) -> dict:
    """One multirun in a fresh folder with an empty feature cache: wall time, trials, the winner."""
    folder = work / name
    folder.mkdir()
    started = time.perf_counter()
    command = [sys.executable, "-m", "tlsweep", *args, f"feature_cache.dir={folder / 'cache'}"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (folder / "output.txt").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"wall": wall, **measured(folder)}


def measured(folder: Path) -> dict:
    """What a finished multirun's records say: its trials and runs (each run's seconds), its winner, its race."""
    from tlsweep.results import load_sweep, winner

    (root,) = (folder / "outputs" / "sweeps").iterdir()
    result = load_sweep(root)
    found = winner(result)
    low, high = found.interval or (found.value, found.value)
    return {
        "trials": sum(1 for _, t in result.trials if t.run.is_search and t.status in ("completed", "pruned")),
        "runs": len(result.trials),
        "run_seconds": {f"{job.name}/{t.trial_id}": t.run.duration_s for job, t in result.trials},
        "winner": f"{found.job.name} {found.name}",
        "value": found.value,
        "interval": (low, high),
        "race": result.race.lines() if result.race else [],
        "job_seconds": {job.name: job.record.duration_s or 0.0 for job in result.jobs},  # a raced job's: last round
        "finished": [e.name for e in result.race.entries if e.fate == "finished"] if result.race else [],
    }


def side(name: str, result: dict) -> str:
    return f"  {name + ':':30} {result['wall']:7.0f} s, {result['trials']} trials, {result['runs']} runs"


def compare(full: dict, raced: dict, floors: list[float]) -> None:
    """The two sides' winners, the race's fates, and its share of the full sweep's time, three ways."""
    for name, result in (("full sweep", full), ("race", raced)):
        low, high = result["interval"]
        interval = f"95% interval {low:.4f}–{high:.4f}"
        print(f"  {name} winner: {result['winner']}, val_accuracy {result['value']:.4f} ({interval})")
    for line in raced["race"]:
        print(f"    {line}")
    share = raced["wall"] / full["wall"]
    in_floors = floor_units(raced["wall"], floors, 1) / floor_units(full["wall"], floors, 0)
    print(f"  floor before, between and after: {', '.join(f'{f:.1f} s' for f in floors)}")
    print(f"  the race took {share:.0%} of the full sweep's time ({in_floors:.0%} in units of the floor around each)")
    # every run of the race is a run of the full sweep (same jobs, seed and trials): timed as it took there, the
    # race's runs measure its training work free of the machine's drift between the two sides
    runs, total = full["run_seconds"], sum(full["run_seconds"].values())
    priced = sum(runs[run] for run in raced["run_seconds"] if run in runs)
    print(f"  the race's runs, each timed as it took in the full sweep: {priced:.0f} s of its {total:.0f} s of runs "
          f"({priced / total:.0%}); the race's own took {sum(raced['run_seconds'].values()):.0f} s")  # fmt: skip
    kept = sum(full["job_seconds"].get(name, 0.0) for name in raced["finished"])
    print(f"  the {len(raced['finished'])} job(s) the race ran to the end took {kept:.0f} s in the full sweep, "
          f"{kept / full['wall']:.0%} of it: no race that keeps them can take less")  # fmt: skip
    low, high = full["interval"]
    same = raced["winner"] == full["winner"]
    within = low <= raced["value"] <= high
    print(f"  the race's winner is {'the full sweep’s' if same else 'another job or trial'}; its mean is "
          f"{'inside' if within else 'outside'} the full sweep winner's interval")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="where the dataset and runs go (default: temporary)")
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--again", action="store_true", help="print the comparison of the runs already in --work")
    options = parser.parse_args()
    if options.again:
        saved = json.loads((options.work / "race.json").read_text())
        full, raced = ({"wall": saved[key]["wall"], **measured(options.work / name)}
                       for key, name in (("full", "full"), ("race", "race")))  # fmt: skip
        print(side("full sweep (basic sweeper)", full), side("race", raced), sep="\n")
        compare(full, raced, saved["floors"])
        return
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"needs the flower photos and MobileNetV2 weights in {SHARED}")
    work = options.work or Path(tempfile.mkdtemp(prefix="tlsweep-race-"))
    dataset = work / f"flowers-{options.size}"
    if not dataset.exists():
        build_dataset(options.size, dataset)
    sys.stdout.reconfigure(line_buffering=True)
    print(f"working in {work}: 8 jobs on {options.size} images")
    floors = [floor_pass(dataset)]
    full = sweep("full", multirun(dataset), work)
    print(side("full sweep (basic sweeper)", full))
    floors.append(floor_pass(dataset))
    raced = sweep("race", [*multirun(dataset), "hydra/sweeper=race"], work)
    print(side("race", raced))
    floors.append(floor_pass(dataset))
    compare(full, raced, floors)
    (work / "race.json").write_text(json.dumps({"full": full, "race": raced, "floors": floors}, indent=2))


if __name__ == "__main__":
    main()
