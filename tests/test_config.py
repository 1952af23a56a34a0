"""The config groups compose, and mistakes in them fail early with one clear line."""

from __future__ import annotations

import pytest
from conftest import REPO, make_config, make_spec, run_cli

from tlsweep.config import check_command_line
from tlsweep.errors import TlsweepError
from tlsweep.paths import job_dir_name
from tlsweep.schema import job_spec

GROUP_OPTIONS = {
    "backbone": [path.stem for path in (REPO / "conf" / "backbone").glob("*.yaml")],
    "augmentation": ["none", "light", "standard"],
    "finetune": ["none", "top", "full"],
    "dataset": ["digits", "folder", "tf_flowers", "text_folder", "text_table", "text_demo"],
    "tuner": ["random", "bayesian", "hyperband", "grid"],
    "search": ["default"],
}


def test_default_config_is_the_offline_demo() -> None:
    spec = make_spec()
    assert spec.backbone.name == "tiny" and spec.backbone.weights == "bundled"
    assert spec.dataset.name == "digits"
    space = {knob.key: knob.expression for knob in spec.space}
    assert space == {  # the search the demo has always run, now three lines of config
        "finetune.learning_rate": "tag(log, interval(1e-4, 1e-2))",
        "finetune.optimizer": "choice(adam, sgd)",  # the loaded optimizers
        "finetune.unfreeze_depth": "choice(0, 5, 10, 20)",  # the backbone's suggested depths
    }


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes(group: str, option: str) -> None:
    reads_texts = ["backbone=tiny_text"]
    needs = {"folder": ["dataset.path=x"], "hub": ["backbone.handle=x"], "keras_hub": ["backbone.preset=x"],
             "text_folder": ["dataset.path=x", *reads_texts], "text_table": ["dataset.path=x.csv", *reads_texts],
             "text_demo": reads_texts, "keras_hub_text": ["backbone.preset=x"]}  # fmt: skip
    path = REPO / "conf" / "backbone" / f"{option}.yaml"
    text = path.is_file() and "input: text" in path.read_text()
    with_texts = ["dataset=text_demo"] if group == "backbone" and text else []  # a text encoder reads texts
    spec = job_spec(make_config([f"{group}={option}", *needs.get(option, []), *with_texts]))
    chosen = {
        "backbone": lambda: spec.backbone.name,
        "augmentation": lambda: {False: "none", True: option}[spec.augmentation.changes_images],
        "finetune": lambda: spec.finetune.mode,
        "dataset": lambda: spec.dataset.name,
        "tuner": lambda: spec.tuner.name,
        "search": lambda: (
            "default"
            if [k.name for k in spec.space] == ["learning_rate", "optimizer", "unfreeze_depth"]
            else [k.name for k in spec.space]
        ),
    }[group]()
    assert chosen == option  # the job runs with the option the command line named


def test_backbones_know_size_and_preprocessing() -> None:
    expected = {"mobilenet_v2": (160, "tf"), "resnet": (224, "tf"), "efficientnet": (224, "none")}
    for name, (size, prep) in expected.items():
        cfg = make_config([f"backbone={name}"])
        assert (cfg.backbone.image_size, cfg.backbone.preprocessing, cfg.backbone.weights) == (size, prep, "imagenet")


def test_optimizer_group_loads_several_and_search_can_fix_one() -> None:
    spec = make_spec(["optimizer=[adam,sgd,rmsprop]"])
    assert spec.knob("finetune.optimizer").values == ("adam", "sgd", "rmsprop")
    assert spec.optimizer["sgd"]["momentum"] == 0.9
    fixed = make_spec(["search.params.finetune.optimizer=sgd"]).knob("finetune.optimizer")
    assert (fixed.kind, fixed.values) == ("fixed", ("sgd",))


def test_experiment_preset_sets_several_groups() -> None:
    cfg = make_config(["experiment=flowers"])
    assert (cfg.dataset.name, cfg.backbone.name, cfg.augmentation.rotation) == ("tf_flowers", "mobilenet_v2", 0.2)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["search.params.finetune.learning_rate=tag(log, interval(0.1, 0.01))"], "needs its lower end first"),
        (["search.params.finetune.learning_rate=tag(log, interval(0, 0.01))"], "needs positive ends"),
        (["finetune.learning_rate=0"], "finetune.learning_rate=0.0 must be positive"),
        (["search.params.finetune.optimizer=adamw"], "load it with optimizer=[adam,sgd,adamw]"),
        (["search.params.finetune.unfreeze_depth=choice(-1, 2)"], "finetune.unfreeze_depth=-1 must be 0 or more"),
        (["tuner.max_trials=0"], "tuner.max_trials=0 must be at least 1"),
        (["finetune.dropout=1.5"], "finetune.dropout=1.5"),
        (["finetune=top", "finetune.finetune_epochs=0"], "use finetune=none"),
        (["dataset=folder"], "dataset.path must be set"),
        (["finalists.replicate=1"], "set finalists.top=0 with it"),  # the finalists would rerun its seed
    ],
)
def test_invalid_settings_name_the_key_and_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(TlsweepError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_spec(overrides)


def test_unfreeze_depth_larger_than_backbone() -> None:
    with pytest.raises(TlsweepError, match="has only 23 layers"):
        make_spec(["search.params.finetune.unfreeze_depth=choice(5, 40)"]).check_depths(23, "tiny")


def test_job_folder_names_show_what_the_job_sweeps() -> None:
    argv = [
        "-m",
        "backbone=resnet,efficientnet",
        "tuner.max_trials=2",
        "search.params.finetune.unfreeze_depth=choice(0, 3)",
    ]
    assert job_dir_name(
        ["backbone=resnet", "tuner.max_trials=2", "search.params.finetune.unfreeze_depth=choice(0, 3)"], 0, argv
    ) == ("backbone=resnet")
    assert job_dir_name(["tuner.max_trials=2"], 3, ["tuner.max_trials=2"]) == "job3"  # nothing swept
    # jobs launched without the sweep's command line (other launchers) keep every override
    assert job_dir_name(["backbone=resnet", "tuner.max_trials=2"], 0, []) == "backbone=resnet,tuner.max_trials=2"


def test_job_folder_names_are_safe_and_unique() -> None:
    assert "/" not in job_dir_name(["backbone.weights=/data/w.h5", "backbone=resnet"], 1, [])
    assert len(job_dir_name(["x=" + "a" * 500], 0, [])) <= 120
    argv = ["-m", "dataset=folder", "dataset.path=photos/2024,photos_2024"]
    names = {job_dir_name([f"dataset.path={p}"], n, argv) for n, p in enumerate(["photos/2024", "photos_2024"])}
    assert len(names) == 2, names  # two jobs never share a folder, even when their values look alike


def test_help_lists_config_groups_and_options(tmp_path) -> None:
    result = run_cli(["--help"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout
    for group, options in GROUP_OPTIONS.items():
        assert f"{group}: {', '.join(sorted(options))}" in result.stdout
    assert "optimizer: adam, rmsprop, sgd" in result.stdout
    assert "tensorboard --logdir outputs" in result.stdout


def test_unknown_group_option_lists_the_choices_without_traceback(tmp_path) -> None:
    result = run_cli(["backbone=resnet51"], tmp_path, timeout=120)
    assert result.returncode == 1
    assert "Could not find 'backbone/resnet51'" in result.stdout
    assert "efficientnet" in result.stdout and "Traceback" not in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["tuner.max_trials=abc"], "tuner.max_trials=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        (["+tuner.max_trail=3"], "unknown config key tuner.max_trail; did you mean tuner.max_trials?"),
        (["tuner.max_trail=3"], "unknown config key tuner.max_trail; did you mean tuner.max_trials?"),
        (["backbon=tiny"], "unknown config key backbon; did you mean backbone?"),
        (["verbose=maybe"], "verbose=maybe: Value 'maybe' is not a valid bool"),
        (["backbone=resnett"], "Could not find 'backbone/resnett'; options: bert_tiny, clip, convnext, densenet121"),
        (["-m", "seed=0,-1"], "seed=-1 must be a whole number from 0 to 4294967295"),  # every value is checked
        (["seed=4294967296"], "seed=4294967296 must be a whole number from 0 to 4294967295"),  # NumPy's limit
        (["-m", "augmentation=none,light", "tuner.max_consecutive_failed_trials=0"], "must be at least 1"),
        (["search.params.finetune.learning_rate=tag(log, interval(0.1, 0.01))"], "needs its lower end first"),
        (["search.params.finetune.dropout=interval(0.1, 0.7"], "is not Hydra's sweep grammar"),
    ],
)
def test_the_command_line_is_checked_before_any_job_starts(args: list[str], message: str) -> None:
    with pytest.raises(TlsweepError) as info:
        check_command_line(args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_good_command_line_and_hydras_own_options_pass_the_check() -> None:
    specs = check_command_line(["-m", "backbone=tiny,mobilenet_v2", "augmentation=none,light", "tuner=hyperband"])
    checked = [(s.backbone.name, s.augmentation.flip, s.tuner.name) for s in specs]
    assert checked == [
        ("tiny", None, "hyperband"),
        ("mobilenet_v2", None, "hyperband"),
        ("tiny", "horizontal", "hyperband"),
    ]
    assert check_command_line(["--cfg", "job", "tuner.max_trials=abc"]) == []  # Hydra prints it (and its own error)
    (spec,) = check_command_line(["hydra.run.dir=somewhere", "hydra/launcher=basic"])  # Hydra's own: left to it
    assert spec.backbone.name == "tiny"


def test_a_wrong_type_is_one_line_and_makes_no_folder(tmp_path) -> None:
    result = run_cli(["tuner.max_trials=abc"], tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert result.stdout.strip().splitlines() == [
        "error: tuner.max_trials=abc: Value 'abc' of type 'str' could not be converted to Integer"
    ]
    assert not (tmp_path / "outputs").exists()
