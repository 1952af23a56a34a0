"""Finalists: a job's best configurations trained again with more seeds, so its answer outlasts seed noise.

One draw per configuration ranks luck as much as choices. After the search, the top
``finalists.top`` configurations each run ``finalists.seeds - 1`` more times, with other seeds,
on the same features and splits. Each run is recorded like a trial (``trials/trial_<id>.s<n>.json``,
its TensorBoard run, resumable). The job's result is the configuration with the best mean, and its
model is that configuration's run closest to the mean (``tlsweep.records.winner`` decides, from the
records alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.logs import BestModel, TrialLog
from tlsweep.trial import TwoStageTrial, seed_keras, trial_seed

log = logging.getLogger(__name__)


class Chosen(dict):
    """Hyperparameters already chosen (a finalist's), answering a trial's declarations with their values."""

    def get(self, name: str, default: Any = None) -> Any:  # noqa: D102  the hp.get a trial calls
        return super().get(name, default)

    def Float(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  KerasTuner's names
        return self[name]

    def Choice(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self[name]

    def Fixed(self, name: str, value: Any) -> Any:  # noqa: N802
        return self.setdefault(name, value)


@dataclass
class FinalistRuns:
    """Runs the finalists of one job: its top configurations, each with more seeds."""

    trial: TwoStageTrial
    job_dir: Path
    context: dict[str, Any]  # what each run records beside its hyperparameters (as a search trial does)
    seed: int
    top: int
    seeds: int
    verbose: bool
    logdir: Path

    def run(self, completed: list[dict[str, Any]], best: BestModel) -> None:
        """Train the extra seeds of the top configurations of ``completed`` (trial records), then keep
        the winner's run closest to its mean as the job's best model."""
        chosen = finalist_trials(completed, self.trial.settings.objective.name, self.top)
        if not chosen or self.seeds < 2:
            return
        log.info(
            "finalists: the top %d configurations, each with %d more seed(s)", len(chosen), self.seeds - 1
        )
        weights: dict[str, list[Any]] = {}
        for rank, record in enumerate(chosen, 1):
            for replicate in range(1, self.seeds):
                weights.update(self._run(record, replicate, f"finalist {rank}/{len(chosen)}, seed {replicate + 1}"))
        self._keep_winner(best, weights)

    def _run(self, original: dict[str, Any], replicate: int, label: str) -> dict[str, list[Any]]:
        """One more seed of a finalist; nothing when an earlier (resumed) run already recorded it."""
        run_id = f"{original['trial_id']}.s{replicate}"
        path = self.job_dir / files.TRIALS_DIR / f"trial_{run_id}.json"
        if _completed(path):
            return {}
        values = dict(original["hyperparameters"])
        seed = trial_seed(self.seed, values, replicate)
        context = {**self.context, "finalist_of": original["trial_id"], "replicate": replicate, "seed": seed}
        trial_log = TrialLog(self.job_dir, run_id, label, values, context, self.verbose, self.logdir)
        seed_keras(seed)
        trial_log.start()
        hp = Chosen(values)
        model = self.trial.build(hp)
        try:
            summary = self.trial.fit(hp, model, trial_log=trial_log, seed=seed)
        except Exception as e:  # a seed that diverges is a finding about the configuration, not a crash
            trial_log.fail(e)
            return {}
        trial_log.finish(summary)
        trial_log.complete()
        objective = self.trial.settings.objective.name
        log.info("%s done: %s %.4f (trial_%s)", label, objective, summary[objective], run_id)
        return {run_id: model.get_weights()}

    def _keep_winner(self, best: BestModel, weights: dict[str, list[Any]]) -> None:
        """Make ``best.keras`` the winning configuration's run closest to its mean, as the records name it."""
        from tlsweep.records import load_job, winner_of_job  # records come after the search in the pipeline

        job = load_job(self.job_dir, self.job_dir)
        found = winner_of_job(job)
        if found is None:
            return
        run, group = found
        if best.read().get("trial_id") == run.trial_id:
            return
        model = self.trial.classifier.model
        if run.trial_id in weights:
            model.set_weights(weights[run.trial_id])
        else:  # a run of an earlier process (resumed) or the search's own: trained again, the same by its seed
            hp = Chosen(run.record["hyperparameters"])
            model = self.trial.build(hp)
            seed_keras(int(run.record.get("seed", trial_seed(self.seed, dict(hp), 0))))
            self.trial.fit(hp, model, seed=int(run.record.get("seed", trial_seed(self.seed, dict(hp), 0))))
        best.keep(run.record, model, {"mean": group.mean, "interval": group.interval, "runs": len(group.values)})


def finalist_trials(completed: list[dict[str, Any]], objective: str, top: int) -> list[dict[str, Any]]:
    """The search trials of the ``top`` best distinct configurations, best first."""
    minimise = objective.endswith("loss")
    scored = [r for r in completed if isinstance(r.get(objective), (int, float)) and "finalist_of" not in r]
    scored.sort(key=lambda r: r[objective] if minimise else -r[objective])
    chosen, seen = [], set()
    for record in scored:
        key = tuple(sorted(record.get("hyperparameters", {}).items()))
        if key not in seen:
            seen.add(key)
            chosen.append(record)
    return chosen[:top]


def _completed(path: Path) -> bool:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") == "completed"
    except (OSError, ValueError):
        return False
