"""Finalists: a job's best configurations trained again with more seeds, so its answer outlasts seed noise.

One draw per configuration ranks luck as much as choices. After the search, the top
``finalists.top`` configurations within noise of the best each run ``finalists.seeds - 1`` more
times with other seeds, on the same features and splits, through the job's ``Runner`` like every run
(``trials/trial_<id>.s<n>.json``; a resumed job skips the runs already recorded). Every run of a
mean trains the full schedule: under Hyperband, whose search runs train on epoch budgets, a
finalist's own seed runs again in full (``.s0``). Then ``keep_winner`` makes the job's model the
answer ``tlsweep.results.winner`` names — from the records alone — retrained on every image when
``finalists.refit`` asks.
"""

from __future__ import annotations

import logging

from tlsweep.errors import TlsweepError
from tlsweep.results import Winner, finalist_candidates, finalist_groups, job_winner, load_job
from tlsweep.runs import Runner, RunPlan
from tlsweep.spec import JobSpec

log = logging.getLogger(__name__)


def run_finalists(runner: Runner) -> None:
    """Train the extra seeds of the job's top configurations, side by side: every configuration's next seed
    before any configuration's seed after it. A configuration whose interval is already entirely below the
    leader's gets no more seeds: they could not make it the best, and its verdict, behind the best, is
    settled. (None runs once the budget is spent.)"""
    spec = runner.spec
    if not spec.finalists.enabled:
        return
    job = load_job(runner.job_dir)
    top, left_out = finalist_candidates(job, spec.objective, spec.finalists.top)
    if not top:
        return
    done = {t.trial_id for t in job.trials if t.status in ("completed", "failed")}
    seeds = spec.finalists.seeds
    which = f"the top {len(top)} configurations, each" if len(top) > 1 else "the best configuration"
    log.info("finalists: %s over %d seeds", which, seeds)
    for why in left_out:
        log.info("finalists: %s: not a finalist", why)
    plans = []
    for rank, original in enumerate(top, 1):
        own = [t for t in job.trials if t.run.configuration == original.run.configuration and t.run.comparable]
        for replicate in range(seeds):
            if replicate or not any(t.run.replicate == 0 for t in own):  # Hyperband's own seed, again in full
                label = f"(finalist {rank} of {len(top)}, seed {replicate + 1} of {seeds})"
                plans.append((replicate, rank, original, label))
    settled: set[str] = set()
    plans.sort(key=lambda p: p[:2])

    def planned() -> dict[str, object]:
        """The finalists' runs still to come, by id and unfreeze depth, for the time left (done ones count no more)."""
        later = [(r, o) for r, _, o, _ in plans if o.trial_id not in settled]
        return {f"{o.trial_id}.s{r}": o.run.depth for r, o in later}

    for replicate, _, original, label in plans:
        run_id = f"{original.trial_id}.s{replicate}"
        if run_id in done or original.trial_id in settled:
            continue
        if runner.out_of_time():
            log.info("finalists: the budget is spent; the winner is chosen from the runs done")
            break
        behind = _clearly_behind(runner, original.trial_id)
        if behind:
            log.info("finalists: trial_%s %s; its other seeds are not run", original.trial_id, behind)
            settled.add(original.trial_id)
            continue
        plan = RunPlan(run_id, f"trial_{run_id} {label}", original.run.hyperparameters, replicate,
                       finalist_of=original.trial_id)  # fmt: skip
        outcome = runner.run(plan)
        if not outcome.failed:
            cut = outcome.record.stop("budget") is not None
            note = " (cut short by the budget: not counted in its mean)" if cut else ""
            value = outcome.record.value
            log.info("trial_%s done: %s %.4f%s; %s", run_id, spec.objective.name, value, note, runner.timing(planned()))
    _settle(runner)


def _clearly_behind(runner: Runner, name: str) -> str:
    """Why configuration ``name`` can no longer be the best, in words: its 95% interval (over at least two
    seeds) lies entirely below the leader's; empty while it can."""
    groups = finalist_groups(load_job(runner.job_dir), runner.spec.objective)
    group = next((g for g in groups if g.name == name), None)
    if group is None or group is groups[0] or min(len(group.values), len(groups[0].values)) < 2:
        return ""  # one seed has no interval: its value alone says nothing about seed noise
    (low, high), (lead_low, lead_high) = group.interval, groups[0].interval
    minimise = runner.spec.objective.minimise
    if (high < lead_low) if not minimise else (low > lead_high):
        return (
            f"is behind the best beyond seed noise after {len(group.values)} seeds ({group.mean:.4f}, 95% interval "
            f"{low:.4f}–{high:.4f}, against trial_{groups[0].name}'s {lead_low:.4f}–{lead_high:.4f})"
        )
    return ""


def _settle(runner: Runner) -> None:
    """Once a configuration's seeds ran, only its run closest to the mean can still stand for it."""
    job = load_job(runner.job_dir)
    groups = finalist_groups(job, runner.spec.objective)
    finalists = {t.trial_id for g in groups for t in g.runs}
    keep = {g.closest_to_mean().trial_id for g in groups}
    runner.settle(keep | {r for r in runner.kept if r not in finalists})


def keep_winner(runner: Runner) -> Winner | None:
    """Make ``best.keras`` the job's answer, as ``tlsweep.results.winner`` names it: the winning configuration's
    run closest to its mean (or the best run without finalists), retrained on every image with ``finalists.refit``."""
    spec = runner.spec
    damaged = [t.error for t in load_job(runner.job_dir).trials if t.status == "unreadable"]
    if damaged:  # the answer is decided from the records: with one unreadable, it is not known
        raise TlsweepError(
            f"{damaged[0]}{f' (and {len(damaged) - 1} more)' if len(damaged) > 1 else ''}: the job's answer cannot "
            "be decided without it; move the damaged record away and resume, to train that run again"
        )
    winner = job_winner(runner.job_dir, spec.objective)
    if winner is None:
        return None
    if spec.finalists.refit and not winner.refit:
        winner = _refit(runner, spec, winner)
    if winner.group is not None:
        low, high = winner.group.interval
        log.info(
            "finalists done: trial_%s is best, %s %.4f on average over %d seeds (95%% interval %.4f–%.4f); "
            "its model is %s",
            winner.group.name,
            spec.objective.name,
            winner.value,
            len(winner.group.values),
            low,
            high,
            f"trial_{winner.model.trial_id}" + (" (refit)" if winner.refit else ", the seed closest to that mean"),
        )
    held = runner.best.read().get("trial_id") == winner.model.trial_id  # e.g. the search's best, offered
    runner.best.keep(winner, None if held else runner.model_of(winner.model.run))
    runner.settle(set())  # the answer is in best.keras: no other run's weights are needed
    return winner


def _refit(runner: Runner, spec: JobSpec, winner: Winner) -> Winner:
    """The winner retrained on training + validation images for the epochs its run kept, recorded as
    ``trial_<configuration>.refit``; the winner as before when that cannot be done (the budget is spent)."""
    if runner.out_of_time():
        log.warning("finalists.refit: the budget is spent, so the model is trial_%s, not a refit", winner.run.trial_id)
        return winner
    name = winner.group.name if winner.group else winner.run.trial_id
    run = winner.run.run
    plan = RunPlan(
        f"{name}.refit", f"trial_{name}.refit", run.hyperparameters, run.replicate,
        refit_of=name, refit_from=run.trial_id, refit_epochs=int(run.best_epoch or 0),
    )  # fmt: skip
    outcome = runner.run(plan)
    if outcome.failed:
        log.warning("finalists.refit failed, so the exported model is trial_%s", winner.run.trial_id)
        return winner
    images = outcome.record.train_images
    log.info("refit: trial_%s's configuration, %d epochs on %d images", name, plan.refit_epochs, images)
    return job_winner(runner.job_dir, spec.objective) or winner
