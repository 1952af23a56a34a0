"""One KerasTuner search shared by a chief and two workers on this machine, as on a cluster."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from conftest import FAST, start_cli

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_chief_and_two_workers_run_every_trial_once_and_report_them_all(tmp_path: Path) -> None:
    folder = tmp_path / "shared" / "search"
    common = [f"hydra.run.dir={folder}", f"distributed.chief=localhost:{free_port()}", *FAST, "tuner.max_trials=4"]
    # pruning reads the trials both workers write into the shared folder
    common += ["finetune.head_epochs=3", "pruning=median", "pruning.warmup_epochs=1", "pruning.min_trials=1"]
    common += ["finalists.top=2"]  # workers keep their best runs' weights while they search, and let go at the end
    chief = start_cli(["distributed.role=chief", *common, "threads=1"], tmp_path)
    workers = [start_cli(["distributed.role=worker", *common, "threads=1"], tmp_path) for _ in range(2)]
    outputs = [process.communicate(timeout=400)[0] for process in (*workers, chief)]
    assert [p.returncode for p in (*workers, chief)] == [0, 0, 0], outputs

    records = [json.loads(p.read_text()) for p in (folder / "trials").glob("trial_*.json")]
    assert sorted(r["trial_id"] for r in records) == ["0", "1", "2", "3"]
    assert all(r["status"] in ("completed", "pruned") and r["worker"].startswith("worker-") for r in records)
    ended = re.compile(r" of 4\) (done in|pruned at)")
    done_lines = [line for out in outputs[:2] for line in out.splitlines() if ended.search(line)]
    assert len(done_lines) == 4  # each trial ran once, in one of the workers

    job = json.loads((folder / "job.json").read_text())
    best = max((r for r in records if r["status"] == "completed"), key=lambda r: r["value"])
    pruned = sum(r["status"] == "pruned" for r in records)
    assert job["status"] == "completed" and (job["completed_trials"], job["pruned_trials"]) == (4 - pruned, pruned)
    assert job["best"]["trial_id"] == best["trial_id"]  # best.keras is the best of all workers' trials
    assert json.loads((folder / "best.json").read_text())["trial_id"] == best["trial_id"]
    report = (folder / "trials.csv").read_text().splitlines()
    assert len(report) == 5 and "report written to" in outputs[2]
    assert (folder / "best" / "model.keras").is_file() and not (folder / "kept").exists()
