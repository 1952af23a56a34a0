"""The feature cache at real sizes: the plan's decisions, the disk check before any work, the memory
budget's disk path, the cache folder's size limit, and ``python -m tlsweep.cache list|clear``."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_spec, run_cli

from tlsweep.cache.features import plan_cache, plan_cuts
from tlsweep.cache.plan import GB, Cut, available_memory, make_plan, memory_budget, resident_memory
from tlsweep.cache.store import Store, entries, evict
from tlsweep.errors import TlsweepError
from tlsweep.model import build_classifier, unfreeze_top, weights_bytes
from tlsweep.tasks.images import IMAGES
from tlsweep.tasks.images.backbones import load_backbone
from tlsweep.tasks.images.data import load_images as load_dataset

MB = 2**20


def cut(depth: int, row_mb: float, epochs: float = 50, views: tuple[int, ...] = tuple(range(10)), below=0.5) -> Cut:
    return Cut(depth, (depth,), int(row_mb * MB), below, views, epochs)


def test_cuts_go_to_memory_while_the_budget_lasts_then_to_disk_then_to_images() -> None:
    # 1,000 training images, 10 views, 100 validation: a cut of 1 MB per image takes 10.1 GB.
    cuts = [
        cut(0, 0.005),
        cut(12, 0.1, epochs=25, views=(5, 6, 7, 8, 9)),
        cut(54, 1.0, epochs=25, views=(5, 6, 7, 8, 9)),
    ]
    plan = make_plan(cuts, 1000, 100, 10, 4, memory_bytes=GB, disk_bytes=4 * GB)
    assert [(d.cut.cut, d.where) for d in plan.decisions] == [(54, "images"), (12, "disk"), (0, "memory")]
    assert "depth 54 trains from images: caching it would need 5.0 GB on disk" in plan.line()
    roomy = make_plan(cuts, 1000, 100, 10, 4, memory_bytes=64 * GB, disk_bytes=64 * GB)
    assert {d.where for d in roomy.decisions} == {"memory"}
    half = make_plan(cuts, 1000, 100, 10, 2, memory_bytes=GB, disk_bytes=4 * GB)  # float16 fits more
    assert half.where(54) == "disk"


def test_a_cut_that_trains_fewer_epochs_than_its_views_cost_trains_from_images() -> None:
    head = cut(0, 0.005, views=(0, 1, 2, 3, 4))  # stage 1 reads views 0-4
    deep = cut(30, 0.1, epochs=3, views=(5, 6, 7, 8, 9))  # 3 epochs expected there, 5 views to make
    shared = cut(12, 0.1, epochs=3, views=(0, 1))  # its views are made for the head anyway: free
    plan = make_plan([head, deep, shared], 1000, 100, 10, 4, 64 * GB, 64 * GB)
    assert (plan.where(30), plan.where(12), plan.where(0)) == ("images", "memory", "memory")
    assert "fewer than the 5 views" in plan.line()


@pytest.mark.parametrize(
    ("augmentation", "head", "finetune", "views"),
    [("light", 5, 5, 2), ("light", 7, 7, 3), ("light", 2, 2, 2), ("light", 1, 1, 1), ("light", 3, 10, 4)]
    + [("none", 5, 5, 1)],
)
def test_by_default_each_view_serves_up_to_three_epochs_of_a_stage(augmentation, head, finetune, views) -> None:
    epochs = [f"finetune.head_epochs={head}", f"finetune.finetune_epochs={finetune}"]
    assert make_spec([f"augmentation={augmentation}", *epochs]).views == views
    assert make_spec(["augmentation=light", *epochs, "feature_cache.views=7"]).views == 7


def test_each_cut_keeps_only_the_views_its_epochs_read(tmp_path: Path) -> None:
    epochs = ["finetune.head_epochs=2", "finetune.finetune_epochs=3"]
    cfg = make_spec(["augmentation=light", *FAST, *epochs, "feature_cache.views=5"])
    backbone = load_backbone(cfg.backbone, 32)
    cuts = {c.cut: c for c in plan_cuts(cfg, backbone, backbone.build())}
    assert cuts[0].views == (0, 1, 2, 3, 4)  # stage 1 (epochs 0-1), and stage 2 of depth-0 trials
    assert cuts[3].views == (2, 3, 4)  # stage 2 only
    # By default, one view per three epochs of the longer stage, at least two: stage 2 (epochs 2-4) reads views 0, 1, 0,
    # made for stage 1 anyway, so each view's cuts come from one pass of the backbone.
    default = {
        c.cut: c for c in plan_cuts(make_spec(["augmentation=light", *FAST, *epochs]), backbone, backbone.build())
    }
    assert default[0].views == default[3].views == (0, 1)
    assert cuts[3].row_bytes > cuts[0].row_bytes and 0 < cuts[3].below < cuts[0].below == 1.0
    hyperband = make_spec(["augmentation=light", *FAST, *epochs, "tuner=hyperband"])  # it splits epochs itself
    assert {c.views for c in plan_cuts(hyperband, backbone, backbone.build())} == {(0, 1)}


def test_no_room_on_disk_for_the_head_is_one_line_before_any_work(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = make_spec(["dataset=folder", f"dataset.path={image_folder}", *FAST, f"feature_cache.dir={tmp_path / 'c'}"])
    data, backbone = load_dataset(cfg.dataset, 32), load_backbone(cfg.backbone, 32)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(TlsweepError, match=r"needs .* on disk for the head's features alone.*cache=false"):
        plan_cache(cfg, backbone, data, IMAGES, backbone.build(), 8 * GB)
    assert not list((tmp_path / "c").iterdir())  # nothing computed


def test_a_disk_limit_too_small_for_the_head_fails_the_job_with_one_line(image_folder: Path, tmp_path: Path) -> None:
    args = ["dataset=folder", f"dataset.path={image_folder}", *FAST, "feature_cache.max_disk_gb=0.000001"]
    run = run_cli(args, tmp_path)
    assert run.returncode == 1
    assert "error: the feature cache needs" in run.stdout and "feature_cache.max_disk_gb" in run.stdout
    assert "Traceback" not in run.stdout
    assert not list(tmp_path.glob("outputs/runs/*/trials/*.json"))


def test_a_job_over_its_memory_budget_reads_the_cache_from_disk_with_the_same_results(
    image_folder: Path, tmp_path: Path
) -> None:
    args = ["-m", "dataset=folder", f"dataset.path={image_folder}", *FAST, "augmentation=light", "seed=3"]
    run = run_cli([*args, "feature_cache.memory_gb=4,1.2"], tmp_path)  # two jobs: in memory, then from disk
    assert run.returncode == 0, run.stdout
    histories = {}
    for name, budget in (("memory", "4"), ("disk", "1.2")):
        (job,) = tmp_path.glob(f"outputs/sweeps/*/feature_cache.memory_gb={budget}")
        plan = next(line for line in (job / "tlsweep.log").read_text().splitlines() if "cut(s)" in line)
        assert ("0.0 MB read from disk" in plan) == (name == "memory"), plan
        records = sorted((job / "trials").glob("trial_*.json"))
        histories[name] = [json.loads(p.read_text())["history"] for p in records]
    assert len(histories["disk"]) == 2
    for memory, disk in zip(histories["memory"], histories["disk"], strict=True):
        assert len(memory) == len(disk) == 2
        for a, b in zip(memory, disk, strict=True):
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-4)
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_the_cache_folder_keeps_to_its_size_limit_by_removing_the_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for k in range(3):
        store.get({"k": k}, lambda: [np.zeros(MB // 4, np.float32)], about=f"part {k}")  # 1 MB each
    folders = [store.folder({"k": k}) for k in range(3)]
    for age, folder in zip((300, 100, 200), folders, strict=True):  # key 0 used longest ago, then key 2
        os.utime(folder / "used", (time.time() - age, time.time() - age))
    removed = evict(tmp_path, 1.5 * MB, keep=set())
    assert [e.folder for e in removed] == [folders[0], folders[2]]
    assert [e.folder for e in entries(tmp_path)] == [folders[1]]
    store.get({"k": 1}, lambda: pytest.fail("kept"))
    assert evict(tmp_path, 0, keep={folders[1]}) == []  # what a job needs now is never removed


def test_cache_list_and_clear(tmp_path: Path) -> None:
    Store(tmp_path / "c").get({"k": 1}, lambda: [np.zeros((256, 1024), np.float32)], about="resnet 224px, cut at 0")

    def cache(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tlsweep.cache", *args], capture_output=True, text=True)

    listed = cache("list", str(tmp_path / "c"))
    assert listed.returncode == 0 and "resnet 224px, cut at 0" in listed.stdout and "1.0 MB" in listed.stdout
    assert "1 key(s), 1.0 MB" in listed.stdout
    cleared = cache("clear", str(tmp_path / "c"))
    assert "removed 1 key(s), 1.0 MB" in cleared.stdout and not entries(tmp_path / "c")
    missing = cache("list", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no feature cache in" in missing.stderr


def test_the_default_budget_is_half_the_free_memory_shared_by_parallel_jobs() -> None:
    held = resident_memory()
    alone, shared = memory_budget(None, 1) - held, memory_budget(None, 2) - held
    assert alone == pytest.approx(available_memory() / 2, rel=0.2)
    assert shared == pytest.approx(alone / 2, rel=0.2)
    assert memory_budget(4, 2) == 4 * GB  # a budget set by hand is the job's own


def test_the_plan_sets_memory_aside_for_the_weights_of_runs_that_may_still_win(
    image_folder: Path, tmp_path: Path
) -> None:
    base = ["dataset=folder", f"dataset.path={image_folder}", *FAST, f"feature_cache.dir={tmp_path / 'c'}"]
    base.append("search.params.finetune.unfreeze_depth=choice(0, 6)")
    finalists = make_spec([*base, "finalists.top=3", "finalists.seeds=3", "finalists.refit=true"])
    assert finalists.kept_runs == 3 + 3 * 2 + 1  # the search's best run of each, two more seeds each, the refit
    data, backbone = load_dataset(finalists.dataset, 32), load_backbone(finalists.backbone, 32)
    network = backbone.build()
    deepest = weights_bytes(network, backbone, 6)
    model = build_classifier(backbone, 2, 0.2, None, network)
    unfreeze_top(model, backbone, 6)
    trained = sum(math.prod(v.shape) * 4 for v in model.get_layer("backbone").trainable_variables)
    assert 0 < trained <= deepest  # a kept run's weights fit in what is set aside for it
    plan = plan_cache(finalists, backbone, data, IMAGES, network, 8 * GB).plan
    assert plan.kept == 10 * deepest and "kept for the weights of runs that may still win" in plan.line()
    alone = plan_cache(make_spec(base), backbone, data, IMAGES, network, 8 * GB).plan
    assert alone.kept == 0 and alone.memory_bytes - plan.memory_bytes == pytest.approx(plan.kept, abs=64 * MB)
