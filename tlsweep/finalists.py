"""Finalists: a job's best configurations trained again with more seeds, so its answer outlasts seed noise.

One draw per configuration ranks luck as much as choices. After the search, the top
``finalists.top`` configurations each run ``finalists.seeds - 1`` more times with other seeds, on
the same features and splits. Each run is recorded like a trial (``trials/trial_<id>.s<n>.json``,
its TensorBoard run; a resumed job skips the runs already recorded). The job's result is the
configuration with the best mean, and its model is that configuration's run closest to the mean:
``tlsweep.records.finalist_groups`` decides, from the records alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsweep import files
from tlsweep.batches import Source
from tlsweep.logs import BestModel, TrialLog
from tlsweep.records import Sweep, Trial, budget_stop, finalist_groups, load_job, ranking, read_json
from tlsweep.stopping import StopRules
from tlsweep.trial import TrialFailed, TwoStageTrial, seed_keras, trial_seed

log = logging.getLogger(__name__)


class Chosen(dict):
    """Hyperparameters already chosen (a finalist's): a trial's declarations get their values back."""

    def Float(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  the names KerasTuner's hp uses
        return self[name]

    def Choice(self, name: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self[name]

    def Fixed(self, name: str, value: Any) -> Any:  # noqa: N802
        return self.setdefault(name, value)


@dataclass
class Finalists:
    """Runs the finalists of one job: its top configurations, each with more seeds."""

    trial: TwoStageTrial
    job_dir: Path
    context: dict[str, Any]  # what each run records beside its hyperparameters, as a search trial does
    seed: int
    top: int
    seeds: int
    verbose: bool
    logdir: Path
    refit: Callable[[], Source] | None = None  # finalists.refit: the training + validation images, as a source
    deadline: float | None = None  # the job's budget (time.monotonic()): no run starts after it

    def run(self, best: BestModel) -> None:
        """Train the extra seeds of the job's top configurations, then keep the winner's run closest to
        its mean as the job's best model."""
        job = load_job(self.job_dir, self.job_dir)
        objective = self.trial.settings.objective.name
        ranked = ranking(Sweep(job.path, [job]), objective)
        originals = _distinct([t for _, t, _ in ranked if "finalist_of" not in t.record])
        chosen = originals[: self.top]
        if len(chosen) < 1 or self.seeds < 2:
            return
        log.info("finalists: the top %d configurations, each with %d more seed(s)", len(chosen), self.seeds - 1)
        weights: dict[str, list[Any]] = {}
        for rank, original in enumerate(chosen, 1):
            for replicate in range(1, self.seeds):
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    log.info("finalists: the budget is spent; the winner is chosen from the runs done")
                    return self._keep_winner(best, weights)
                label = f"finalist {rank}/{len(chosen)} (trial_{original.trial_id}), seed {replicate + 1}/{self.seeds}"
                weights.update(self._run(original, replicate, label))
        self._keep_winner(best, weights)

    def _run(self, original: Trial, replicate: int, label: str) -> dict[str, list[Any]]:
        """One more seed of a finalist, and its weights; nothing when a resumed job already recorded it."""
        run_id = f"{original.trial_id}.s{replicate}"
        if _completed(self.job_dir / files.TRIALS_DIR / f"trial_{run_id}.json"):
            return {}
        hp = Chosen(original.record["hyperparameters"])
        seed = trial_seed(self.seed, dict(hp), replicate)
        context = {**self.context, "finalist_of": original.trial_id, "replicate": replicate, "seed": seed}
        trial_log = TrialLog(self.job_dir, run_id, label, dict(hp), context, self.verbose, self.logdir)
        trial_log.start()
        try:
            model, summary = self._train(hp, seed, trial_log, StopRules(deadline=self.deadline))
        except TrialFailed as e:  # a seed that diverges is a finding about the configuration: recorded, not fatal
            trial_log.fail(e)
            return {}
        trial_log.finish(summary)
        trial_log.complete()
        objective = self.trial.settings.objective.name
        cut = budget_stop(trial_log.record) is not None
        note = " (cut short by the budget: not counted in its mean)" if cut else ""
        log.info("%s done: %s %.4f%s", label, objective, summary[objective], note)
        return {run_id: model.get_weights()}

    def _train(
        self, hp: Chosen, seed: int, trial_log: TrialLog | None = None, rules: StopRules | None = None
    ) -> tuple[Any, dict[str, Any]]:
        seed_keras(seed)
        model = self.trial.build(hp)
        return model, self.trial.fit(hp, model, trial_log=trial_log, seed=seed, rules=rules)

    def _keep_winner(self, best: BestModel, weights: dict[str, list[Any]]) -> None:
        """Make ``best.keras`` the winning configuration's run closest to its mean, as the records name it."""
        groups = finalist_groups(load_job(self.job_dir, self.job_dir), self.trial.settings.objective.name)
        if not groups:
            return
        group = groups[0]
        run = group.closest_to_mean()
        low, high = group.interval
        log.info(
            "finalists done: trial_%s is best, %s %.4f on average over %d seeds (95%% interval %.4f–%.4f); "
            "its model is the seed closest to that mean (trial_%s)",
            group.trial_id,
            self.trial.settings.objective.name,
            group.mean,
            len(group.values),
            low,
            high,
            run.trial_id,
        )
        summary = {"mean": group.mean, "interval": [low, high], "runs": len(group.values)}
        if self.refit is not None:
            record, model = self._refit(run)
            best.keep(record, model, {**summary, "refit_of": run.trial_id})
            return
        if best.read().get("trial_id") == run.trial_id:
            return
        if run.trial_id in weights:
            model = self.trial.classifier.model
            model.set_weights(weights[run.trial_id])
        else:  # the search's own run, or one of an earlier (resumed) process: trained again, the same by its seed
            hp = Chosen(run.record["hyperparameters"])
            seed = trial_seed(self.seed, dict(hp), int(run.record.get("replicate", 0)))
            model, _ = self._train(hp, seed, rules=StopRules(last_epoch=budget_stop(run.record)))
        best.keep(run.record, model, summary)

    def _refit(self, run: Trial) -> tuple[dict[str, Any], Any]:
        """The winning configuration retrained on training + validation images for the epochs its chosen run
        kept, recorded as ``trial_<id>.refit``."""
        source = self.refit()
        hp = Chosen(run.record["hyperparameters"])
        seed = trial_seed(self.seed, dict(hp), int(run.record.get("replicate", 0)))
        epochs = int(run.record["best_epoch"])
        group_id = str(run.record.get("finalist_of") or run.trial_id)
        context = {**self.context, "refit_of": group_id, "seed": seed, "train_images": len(source.train.labels)}
        trial_log = TrialLog(self.job_dir, f"{group_id}.refit", "refit", dict(hp), context, self.verbose, self.logdir)
        trial_log.start()
        seed_keras(seed)
        model = self.trial.build(hp)
        self.trial.refit(hp, model, source, epochs, trial_log, seed)
        trial_log.finish({"best_epoch": epochs, "best_stage": trial_log.stage, "rolled_back": False, "stages": {}})
        trial_log.complete()
        log.info("refit: trial_%s's configuration, %d epochs on %d images", group_id, epochs, len(source.train.labels))
        return trial_log.record, model


def _distinct(trials: list[Trial]) -> list[Trial]:
    """The first trial of each configuration (its hyperparameters), in order."""
    seen, found = set(), []
    for trial in trials:
        key = json.dumps(trial.record.get("hyperparameters", {}), sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(trial)
    return found


def _completed(path: Path) -> bool:
    record, _ = read_json(path)
    return record is not None and record.get("status") == "completed"
