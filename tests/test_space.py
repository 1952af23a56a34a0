"""Search any knob: ``search.params`` in Hydra's sweep grammar becomes KerasTuner's search, and each setting is
declared once."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shlex
from pathlib import Path

import keras_tuner as kt
import pytest
import yaml
from conftest import FAST, REPO, make_image_folder, make_spec, run_cli

from tlsweep.config import check_command_line, search_space_arguments
from tlsweep.errors import TlsweepError
from tlsweep.identity import config_changes
from tlsweep.paths import job_dir_name
from tlsweep.space import parse_knob
from tlsweep.spec import JobSpec


def declared(expression: str, key: str = "finetune.dropout", log_step: float | None = None) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    parse_knob(key, expression).declare(hp, log_step)
    return hp


def test_the_sweep_grammar_becomes_kerastuners_hyperparameters() -> None:
    float_ = kt.engine.hyperparameters.Float
    (h,) = declared("interval(0.1, 0.5)").space
    assert isinstance(h, float_) and (h.min_value, h.max_value, h.sampling) == (0.1, 0.5, "linear")
    (h,) = declared("tag(log, interval(1e-5, 1e-2))", "finetune.learning_rate").space
    assert isinstance(h, float_) and (h.min_value, h.max_value, h.sampling) == (1e-5, 1e-2, "log")
    (h,) = declared("int(interval(8, 64))", "finetune.batch_size").space
    assert isinstance(h, kt.engine.hyperparameters.Int) and (h.min_value, h.max_value, h.step) == (8, 64, 1)
    (h,) = declared("range(0, 60, 12)", "finetune.unfreeze_depth").space  # Hydra's stop is not included
    assert isinstance(h, kt.engine.hyperparameters.Int) and (h.min_value, h.max_value, h.step) == (0, 48, 12)
    (h,) = declared("choice(adam, sgd)", "finetune.optimizer").space
    assert isinstance(h, kt.engine.hyperparameters.Choice) and h.values == ["adam", "sgd"]
    (h,) = declared("choice(0, 0.1)", "finetune.label_smoothing").space  # one kind of value, as Choice takes
    assert h.values == [0.0, 0.1] and all(isinstance(v, float) for v in h.values)
    (h,) = declared("0.25").space  # a plain value pins the knob
    assert isinstance(h, kt.engine.hyperparameters.Fixed) and h.value == 0.25
    (h,) = declared("tag(log, interval(1e-4, 1e-2))", "finetune.learning_rate", log_step=10).space  # the grid's
    assert list(h.values) == pytest.approx([1e-4, 1e-3, 1e-2])
    (h,) = declared("tag(log, int(interval(8, 256)))", "finetune.batch_size").space  # KerasTuner: no step of 1
    assert isinstance(h, kt.engine.hyperparameters.Int) and (h.sampling, h.step) == ("log", None)
    assert 8 <= kt.HyperParameters().Int("b", 8, 256, step=h.step, sampling="log") <= 256
    (h,) = declared("tag(log, int(interval(8, 256)))", "finetune.batch_size", log_step=2).space  # the grid's
    assert list(h.values) == [8, 16, 32, 64, 128, 256]
    with pytest.raises(TlsweepError, match=r"search.params.finetune.dropout=interval\(0.5, 0.1\): an interval needs"):
        parse_knob("finetune.dropout", "interval(0.5, 0.1)")


@pytest.mark.parametrize(
    "args,message",
    [
        (["search.params.backbone.image_size=choice(32, 64)"], "shapes the data or the feature cache, so it is the"),
        (["search.params.augmentation.rotation=interval(0, 0.2)"], "sweep it across jobs with -m"),
        (["search.params.finetune.head_epochs=choice(2, 3)"], "every trial of a job has the job's epoch schedule"),
        (["search.params.finetune.dropuot=interval(0, 0.5)"], "did you mean finetune.dropout?"),
        (["search.params.finetune.unfreeze_depth=interval(0, 10)"], "takes whole numbers: use int(interval(a, b))"),
        (["search.params.finetune.dropout=interval(0.1, 1.5)"], "finetune.dropout=1.5 must be in [0, 1)"),
        (["tuner=grid", "search.params.finetune.dropout=interval(0.1, 0.5)"], "tuner=grid needs a finite grid"),
        (["search.optimizers=[sgd]"], "search.optimizers is now search.params.finetune.optimizer="),
        (["search.unfreeze_depths=[10]"], "is now search.params.finetune.unfreeze_depth="),
        (["search.learning_rate.min=1e-5"], "is now search.params.finetune.learning_rate="),
        (["dataset.batch_size=8"], "dataset.batch_size is now finetune.batch_size"),
        (["tuner.learning_rate_step=100"], "tuner.learning_rate_step is now tuner.log_step"),
    ],
)
def test_what_cannot_be_searched_stops_before_anything_runs(args: list[str], message: str) -> None:
    with pytest.raises(TlsweepError) as refused:
        check_command_line(args)
    said = str(refused.value)
    assert message in said and "\n" not in said, said


def test_a_knob_set_directly_is_each_jobs_value_not_searched_over() -> None:
    """``finetune.optimizer=sgd`` means SGD, and ``-m finetune.dropout=0.1,0.3`` one job per dropout, though the
    default search searches the optimizer and a search may search the dropout."""
    specs = check_command_line(["-m", "finetune.optimizer=sgd", "finetune.dropout=0.1,0.3"])
    assert [(s.finetune.optimizer, s.finetune.dropout) for s in specs] == [("sgd", 0.1), ("sgd", 0.3)]
    assert all(s.knob("finetune.optimizer") is None and s.knob("finetune.dropout") is None for s in specs)
    assert specs[0].knob("finetune.learning_rate") is not None  # the rest of the search is as it was
    (spec,) = check_command_line(["finetune.optimizer=sgd", "search.params.finetune.optimizer=choice(adam, sgd)"])
    assert spec.knob("finetune.optimizer").values == ("adam", "sgd")  # the search, as the command line says


def test_the_search_space_never_names_a_job_and_is_part_of_a_jobs_identity() -> None:
    given = ["-m", "backbone=tiny,mobilenet_v2", "search.params.finetune.dropout=interval(0, 0.5)"]
    argv = search_space_arguments(given)
    assert argv[-1] == "++search.params.finetune.dropout='interval(0, 0.5)'"  # a quoted value to Hydra: no sweep
    assert job_dir_name(["backbone=tiny", argv[-1]], 0, argv) == "backbone=tiny"
    (one,) = check_command_line(["backbone=tiny", argv[-1]])
    assert one.knob("finetune.dropout").kind == "float"
    other = make_spec(["search.params.finetune.dropout=interval(0, 0.3)"])
    changed = config_changes(one.identity(), other.identity())
    assert changed == ["search.params.finetune.dropout: interval(0, 0.5) → interval(0, 0.3)"]  # a resume refuses it


def test_every_setting_is_declared_once() -> None:
    """Each setting's type, default and comment are in tlsweep/groups.py or tlsweep/spec.py; conf/ only picks
    options, and an option sets only what differs from the default."""

    def default(cls: type, path: list[str]) -> object:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        f = fields[path[0]]
        if len(path) > 1:
            return default(f.default_factory().__class__, path[1:])  # type: ignore[misc]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]

    def leaves(tree: object, prefix: list[str]):
        if isinstance(tree, dict):
            for key, value in tree.items():
                if key != "defaults":
                    yield from leaves(value, [*prefix, str(key)])
        else:
            yield prefix, tree

    twice = []
    for path in (REPO / "conf").rglob("*.yaml"):
        group = path.relative_to(REPO / "conf").parts[:-1]
        if not group or group[0] in ("hydra", "optimizer", "experiment", "search"):  # no schema default to repeat
            continue
        for keys, value in leaves(yaml.safe_load(path.read_text()) or {}, list(group)):
            expected = default(JobSpec, keys)
            expected = list(expected) if isinstance(expected, tuple) else expected
            if value == expected:
                twice.append(f"{path.relative_to(REPO)}: {'.'.join(keys)}")
    assert not twice, twice
    for source in ("groups.py", "spec.py"):  # a one-line comment beside every setting
        module = ast.parse((REPO / "tlsweep" / source).read_text())
        lines = (REPO / "tlsweep" / source).read_text().splitlines()
        for node in ast.walk(module):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Spec") and node.name not in ("Workload",):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and "#" not in lines[item.lineno - 1]:
                        pytest.fail(f"tlsweep/{source}: {node.name}.{item.target.id} has no comment")  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_searched_dropout_is_recorded_and_its_rerun_command_reproduces_the_trial_exactly(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images")
    args = ["dataset=folder", f"dataset.path={images}", *FAST, "search.params.finetune.dropout=interval(0.1, 0.5)"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_cli([*args, "search.params.finetune.label_smoothing=choice(0.0, 0.1)"], tmp_path / "a")
    assert first.returncode == 0, first.stdout
    (run,) = (tmp_path / "a" / "outputs" / "runs").iterdir()  # (the images are beside, in tmp_path)
    records = [json.loads(p.read_text()) for p in sorted((run / "trials").glob("trial_*.json"))]
    dropouts = [r["hyperparameters"]["finetune.dropout"] for r in records]
    assert all(0.1 <= d <= 0.5 for d in dropouts) and len(set(dropouts)) == len(dropouts)  # each trial its own
    header = (run / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"finetune.dropout", "finetune.label_smoothing"} <= set(header)
    command = re.search(r"```\n(python -m tlsweep .*)\n```", (run / "report.md").read_text()).group(1)
    assert "interval" not in command and "search.params.finetune.dropout=" in command  # pinned to the trial's value
    again = run_cli(shlex.split(command)[3:], tmp_path / "b")
    assert again.returncode == 0, again.stdout
    (rerun,) = (tmp_path / "b" / "outputs" / "runs").glob("*/trials/trial_0.json")
    rerun = json.loads(rerun.read_text())
    best = next(r for r in records if r["value"] == max(x["value"] for x in records if x["status"] == "completed"))
    assert rerun["hyperparameters"] == best["hyperparameters"]  # every digit of the searched dropout
    assert [e["val_loss"] for e in rerun["history"]] == [e["val_loss"] for e in best["history"]]  # trained the same
