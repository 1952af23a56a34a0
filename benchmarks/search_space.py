"""A wider search space at the same trial count: does it find a better configuration?

On the 3,000-image set of ``sweep_scale.py`` (crops of the 500 shared flower photos), the whole job as
its defaults run it — the flowers preset's search (MobileNetV2 with the shared weights at 160 px,
``augmentation=standard``, 10 trials of 5 + 5 epochs, ASHA pruning), then its finalists over 3 seeds —
twice, side by side:

- the default search: the learning rate, Adam or SGD, the unfreeze depth;
- the same plus label smoothing and weight decay (``search.params.finetune.label_smoothing`` and
  ``search.params.finetune.weight_decay``).

Each job has its own feature cache folder. It prints each job's winner (its mean over seeds and the
95% interval of that mean), its time and peak memory, and whether the two means differ beyond the
intervals.

    python benchmarks/search_space.py [--work DIR] [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sweep_scale import FLOWERS, WEIGHTS, build_dataset, preset, run

WIDER = [
    "search.params.finetune.label_smoothing=choice(0.0, 0.1, 0.2)",
    "search.params.finetune.weight_decay=choice(0.0, 1e-4, 1e-3)",
]


def winner(work: Path, name: str) -> dict:
    """The job's answer as its record holds it: configuration, mean over seeds and interval."""
    (record,) = [json.loads(p.read_text()) for p in (work / name).glob("outputs/runs/*/job.json")]
    return record["best"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where datasets and jobs go (default: a temporary folder)")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        raise SystemExit(f"needs the shared assets at {FLOWERS.parent.parent}")
    work = args.work or Path(tempfile.mkdtemp(prefix="tlsweep-space-"))
    dataset = work / "flowers-3000"
    if not dataset.is_dir():
        build_dataset(3000, dataset)
    base = preset(dataset, args.trials, 5, 5, finalists=True)
    results = {}
    for name, extra in (("default", []), ("wider", WIDER)):
        results[name] = run(name, [*base, *extra], work)
        best = winner(work, name)
        low, high = best.get("interval", [best["value"], best["value"]])
        results[name].update(mean=best["value"], low=low, high=high, hyperparameters=best["hyperparameters"])
        print(
            f"{name:8s} {results[name]['wall']:6.0f} s, peak {results[name]['peak_gb']:.1f} GB: winner "
            f"{best.get('run', best['trial_id'])} val_accuracy {best['value']:.4f} (95% {low:.4f}–{high:.4f}) "
            f"over {best.get('runs', 1)} seeds; {best['hyperparameters']}",
            flush=True,
        )
    a, b = results["default"], results["wider"]
    overlap = a["low"] <= b["high"] and b["low"] <= a["high"]
    verdict = "within each other's intervals" if overlap else "apart beyond their intervals"
    print(f"wider - default: {b['mean'] - a['mean']:+.4f} ({verdict}); time {b['wall'] / a['wall']:.2f}x")


if __name__ == "__main__":
    main()
