"""How long the sweep report takes for a 100-trial sweep (goal: a few seconds).

Runs a real small sweep once (2 jobs × 2 trials of the offline demo), copies its job folders
until the sweep holds 100 trials, then times ``build_report`` on it, next to the 4-trial original.

    python benchmarks/report_build.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlsweep.report import build_report

TRIALS = 100


def run_small_sweep(work: Path) -> Path:
    args = [
        "-m",
        "augmentation=none,light",
        "dataset.image_size=32",
        "finetune.head_epochs=2",
        "finetune.finetune_epochs=2",
        "tuner.max_trials=2",
        "verbose=false",
        "report.enabled=false",
    ]
    subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=work, check=True, capture_output=True)
    (root,) = (work / "outputs" / "sweeps").iterdir()
    return root


def grow(source: Path, target: Path, trials: int) -> int:
    """Copy ``source``'s jobs into ``target`` until it holds ``trials`` trials; returns the count."""
    jobs = sorted(p.parent for p in source.glob("*/job.json"))
    count, copy = 0, 0
    while count < trials:
        for job in jobs:
            shutil.copytree(job, target / f"{job.name},copy={copy}", ignore=shutil.ignore_patterns("tuner", "*.keras"))
            count += len(list(job.glob("trials/trial_*.json")))
        copy += 1
    return count


def timed(root: Path) -> float:
    started = time.perf_counter()
    build_report(root)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = run_small_sweep(work)
        big = work / "big"
        big.mkdir()
        trials = grow(small, big, TRIALS)
        timed(small)  # warm-up: imports, matplotlib's font cache
        small_s, big_s = timed(small), timed(big)
        print(f"report of {len(list(small.glob('*/trials/*.json')))} trials: {small_s:.2f} s")
        print(f"report of {trials} trials: {big_s:.2f} s ({big_s / small_s:.1f}x the small one)")


if __name__ == "__main__":
    main()
