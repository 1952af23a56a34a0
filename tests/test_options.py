"""Options that work together: the demo over a pairwise-covering set of option combinations, and a multirun.

Every pair of values of any two options below runs together in at least one run (checked here, not
assumed). Each run must exit 0 with no traceback or logging error, write the report, export the
model the records name as the answer, and end with a closing line that agrees with the report.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import run_cli

from tlsweep import files
from tlsweep.results import load_sweep, winner

OPTIONS = {
    "tuner": ["random", "bayesian", "hyperband", "grid"],
    "pruning": ["none", "median", "asha"],
    "finalists": ["off", "default", "refit"],
    "budget": ["none", "tight"],
    "cache": ["true", "false"],
    "objective": ["val_accuracy", "val_loss", "val_macro_f1"],
    "class_weight": ["none", "balanced"],
    "tflite": ["false", "true"],
    "space": ["default", "wide"],  # wide: the default search plus dropout and label smoothing
}
# Made by a greedy search for a small covering set (14 runs for 9 options, where all combinations are 5,184).
RUNS = [
    ("bayesian", "asha", "default", "tight", "true", "val_macro_f1", "none", "false", "wide"),
    ("random", "asha", "refit", "none", "false", "val_loss", "balanced", "true", "default"),
    ("hyperband", "none", "off", "none", "true", "val_accuracy", "none", "true", "wide"),
    ("grid", "median", "refit", "tight", "false", "val_accuracy", "balanced", "false", "default"),
    ("hyperband", "none", "default", "tight", "false", "val_macro_f1", "balanced", "true", "wide"),
    ("bayesian", "median", "off", "none", "true", "val_loss", "balanced", "false", "wide"),
    ("grid", "median", "default", "none", "false", "val_loss", "none", "true", "default"),
    ("random", "median", "refit", "none", "true", "val_macro_f1", "none", "false", "wide"),
    ("grid", "asha", "off", "tight", "false", "val_macro_f1", "none", "false", "default"),
    ("hyperband", "none", "refit", "tight", "false", "val_loss", "balanced", "false", "default"),
    ("random", "none", "default", "tight", "true", "val_accuracy", "none", "true", "wide"),
    ("bayesian", "none", "refit", "none", "false", "val_accuracy", "balanced", "true", "default"),
    ("grid", "none", "refit", "tight", "true", "val_loss", "balanced", "false", "wide"),
    ("random", "asha", "off", "tight", "true", "val_accuracy", "balanced", "true", "default"),
]
TINY = [
    "finetune.head_epochs=2",
    "finetune.finetune_epochs=2",
    "search.params.finetune.unfreeze_depth=choice(0, 5)",
    "verbose=false",
]
TINY += [
    "search.params.finetune.optimizer=adam",
    "dataset.fraction=0.5",
]  # one compiled step per depth, half the digits: quick


def allowed(values: dict[str, str]) -> bool:
    """Hyperband stops trials itself and refuses a pruning rule (one line, before any folder is made)."""
    return not (values.get("tuner") == "hyperband" and values.get("pruning", "none") != "none")


def overrides(values: dict[str, str]) -> list[str]:
    args = [f"tuner={values['tuner']}", f"pruning={values['pruning']}", f"cache={values['cache']}"]
    args += [f"tuner.max_trials={4 if values['tuner'] == 'hyperband' else 3}"]  # Hyperband honours it as a cap
    args += [f"tuner.objective={values['objective']}", f"export.tflite={values['tflite']}"]
    args += [f"export.saved_model={values['tflite']}"]  # TFLite converts the SavedModel; otherwise skip it
    args += {"off": ["finalists.top=0"], "default": [], "refit": ["finalists.top=2", "finalists.refit=true"]}[
        values["finalists"]
    ]
    args += ["budget=4s"] if values["budget"] == "tight" else []  # the finalists' share runs out mid-way
    args += ["class_weight=balanced"] if values["class_weight"] == "balanced" else []
    if values["space"] == "wide":  # a grid needs a finite space: the dropout as a choice there
        dropout = "choice(0.1, 0.4)" if values["tuner"] == "grid" else "interval(0.1, 0.5)"
        args += [f"search.params.finetune.dropout={dropout}"]
        args += ["search.params.finetune.label_smoothing=choice(0.0, 0.1)"]
    if values["pruning"] != "none":
        args += ["pruning.min_trials=1", "pruning.warmup_epochs=1"]
    return [*args, *TINY]


def test_the_runs_cover_every_pair_of_option_values() -> None:
    names = list(OPTIONS)
    rows = [dict(zip(names, run, strict=True)) for run in RUNS]
    assert all(allowed(row) for row in rows)
    for a, b in itertools.combinations(names, 2):
        for pair in itertools.product(OPTIONS[a], OPTIONS[b]):
            if allowed(dict(zip((a, b), pair, strict=True))):
                assert any((row[a], row[b]) == pair for row in rows), f"{a}={pair[0]} with {b}={pair[1]}"


def check_outputs(output: str, root: Path, tflite: bool, searched: tuple[str, ...] = ()) -> None:
    """What a user of any combination can rely on; ``searched``: knobs the search space adds, in every run's record
    and the report's table."""
    assert "Traceback" not in output and "Logging error" not in output and "error:" not in output, output
    found = winner(load_sweep(root))
    assert found is not None, output
    export = json.loads((root / files.EXPORT_DIR / files.EXPORT_RECORD).read_text())
    assert export["trial"] == found.model.trial_id and (export["job"] == found.job.name)
    origin = files.model_origin(found.job.path / files.BEST_MODEL)
    assert origin["trial_id"] == found.model.trial_id  # the model file is the run the records name
    assert ("tflite" in export["formats"]) == tflite
    closing = [line for line in output.splitlines() if line.startswith("best: ")]
    assert len(closing) == 1 and found.line() in closing[0], (closing, found.line())
    report = (root / "report.md").read_text()
    headline = next(line for line in report.splitlines() if line.startswith("**Best: "))
    assert found.name in headline and f"{found.value:.4f}" in headline, (headline, found.line())
    for key in searched:
        assert all(key in t.run.hyperparameters for _, t in load_sweep(root).trials), key
        assert key in (root / "trials.csv").read_text().splitlines()[0].split(","), key


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=["-".join(run) for run in RUNS])
def test_options_work_together(run: tuple[str, ...], tmp_path: Path) -> None:
    values = dict(zip(OPTIONS, run, strict=True))
    result = run_cli(overrides(values), tmp_path)
    assert result.returncode == 0, result.stdout
    (root,) = (tmp_path / "outputs" / "runs").iterdir()
    wide = ("finetune.dropout", "finetune.label_smoothing") if values["space"] == "wide" else ()
    check_outputs(result.stdout, root, values["tflite"] == "true", wide)


@pytest.mark.slow
def test_a_two_job_multirun_with_finalists_refit_and_a_budget(tmp_path: Path) -> None:
    args = ["-m", "augmentation=none,light", "tuner.max_trials=3", "finalists.top=2", "finalists.refit=true"]
    space = ["search.params.finetune.label_smoothing=choice(0.0, 0.1)"]
    space += ["search.params.finetune.dropout=interval(0, 0.5)"]
    result = run_cli([*args, "pruning=asha", "pruning.min_trials=1", "budget=1h", *space, *TINY], tmp_path)
    assert result.returncode == 0, result.stdout
    (root,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert sorted(job.name for job in load_sweep(root).jobs) == ["augmentation=light", "augmentation=none"]  # no more
    check_outputs(result.stdout, root, tflite=False, searched=("finetune.dropout", "finetune.label_smoothing"))
