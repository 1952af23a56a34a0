"""The feature cache on texts: the text demo's search with and without it, side by side, in one run.

The offline text demo (``experiment=text_demo``: the bundled tiny_text encoder on 600 standard-library
docstrings of 5 packages), its search alone — 6 trials of 20 + 10 epochs, every trial to its end
(``pruning=none``, no finalists) — run with ``cache=true`` (from an empty cache) and ``cache=false``,
each job in its own process, alternating ``--repeat`` times. It prints each side's median wall time and
search time (the job's record: cache and trials, without Python start-up and loading), their ratio,
and whether both sides trained the same: every trial's validation accuracy and loss, epoch by epoch.

    python benchmarks/text_cache.py [--repeat 2] [--trials 6]
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


def search(name: str, cache: bool, trials: int, work: Path) -> dict:
    """One search of the text demo in a fresh folder and cache: times, and each trial's history."""
    folder = work / name
    folder.mkdir(parents=True)
    args = ["experiment=text_demo", f"cache={str(cache).lower()}", f"tuner.max_trials={trials}", "pruning=none",
            "finalists.top=0", "verbose=false", "report.enabled=false", "export.enabled=false",
            f"feature_cache.dir={folder / 'cache'}"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (record,) = [json.loads(p.read_text()) for p in folder.glob("outputs/runs/*/job.json")]
    trials_run = sorted(folder.glob("outputs/runs/*/trials/trial_*.json"))
    histories = {p.stem: [(e["val_accuracy"], e["val_loss"]) for e in json.loads(p.read_text())["history"]]
                 for p in trials_run}  # fmt: skip
    return {"wall": wall, "search": record["search_s"], "best": record["best"]["value"], "histories": histories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tlsweep-text-cache-"))
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for i in range(args.repeat):
        for cache in (True, False):  # alternating: the machine's drift falls on both sides
            runs[cache].append(search(f"{'cached' if cache else 'plain'}_{i}", cache, args.trials, work))
            r = runs[cache][-1]
            print(f"cache={str(cache).lower():5s} run {i + 1}: {r['wall']:5.1f} s wall, {r['search']:5.1f} s search, "
                  f"best {r['best']:.4f}", flush=True)  # fmt: skip
    cached, plain = runs[True][0], runs[False][0]
    same = all(
        all(abs(a - b) <= 1e-4 for pair in zip(cached["histories"][t], plain["histories"][t], strict=True)
            for a, b in zip(*pair, strict=True))  # fmt: skip
        for t in cached["histories"]
    )
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in ("wall", "search")} for c in (True, False)}
    print(f"median wall {med[True]['wall']:.1f} s cached, {med[False]['wall']:.1f} s plain: "
          f"{med[False]['wall'] / med[True]['wall']:.2f}x; search {med[True]['search']:.1f} s against "
          f"{med[False]['search']:.1f} s: {med[False]['search'] / med[True]['search']:.2f}x")  # fmt: skip
    print(f"the same trials, the same results (every epoch's val_accuracy and val_loss within 1e-4): {same}")


if __name__ == "__main__":
    main()
