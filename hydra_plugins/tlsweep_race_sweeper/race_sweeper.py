"""``python -m tlsweep -m hydra/sweeper=race backbone=a,b,c,d``: a multirun raced as successive halving.

Hydra finds this sweeper in the ``hydra_plugins`` namespace package, as it finds the Optuna and
Nevergrad sweepers. Each round is one batch handed to the configured launcher (``basic``,
``parallel``, ``processes``, ``slurm``), and each job returns its best value so far
(``tlsweep.__main__.main``); ``tlsweep.race`` decides which jobs go on. A job resumes in its own
folder in every round, with more trials (``race.round``), and runs its finalists only in the last.
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scan imports this module before it is in
# sys.modules, where the dataclass below would look its string annotations up.
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035  OmegaConf reads these annotations at run time

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from tlsweep.errors import TlsweepError

log = logging.getLogger("tlsweep.race")


@dataclass
class RaceSweeperConf:
    _target_: str = "hydra_plugins.tlsweep_race_sweeper.race_sweeper.RaceSweeper"
    eta: int = 3  # each round keeps the best 1/eta of the jobs (at least one), and any within noise of the cut
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045  overrides added to every job, as the basic sweeper's


ConfigStore.instance().store(group="hydra/sweeper", name="race", node=RaceSweeperConf, provider="tlsweep")


class RaceSweeper(Sweeper):
    """Runs a multirun's jobs in rounds: all with few trials, then the best ones with more, and so on."""

    def __init__(self, eta: int = 3, params: Optional[Dict[str, str]] = None) -> None:  # noqa: UP006, UP045
        super().__init__()
        if eta < 2:
            raise ValueError(f"hydra.sweeper.eta={eta} must be at least 2, e.g. 3 (keep the best third)")
        self.eta, self.params = eta, dict(params or {})
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        from tlsweep.callbacks import own_lines
        from tlsweep.config import hydra_quoted
        from tlsweep.files import LOG_FILE
        from tlsweep.paths import job_dir_name
        from tlsweep.race import Entry, Race, rounds_for
        from tlsweep.records import RecordError

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        given = [*(f"{k}={v}" for k, v in self.params.items()), *arguments]
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(given), None)[0]
        root = Path(self.config.hydra.sweep.dir)
        root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, root / "multirun.yaml")
        try:
            race = Race.load(root)
        except RecordError as e:
            raise TlsweepError(f"{root}: {e}; move it away to race the jobs again from their records") from None
        if race is None or [e.overrides for e in race.entries] != jobs:
            objective = self._objective(jobs)
            entries = [Entry(job_dir_name(overrides, i), overrides) for i, overrides in enumerate(jobs)]
            race = Race(self.eta, rounds_for(len(jobs), self.eta), objective, 1, entries)
        returns = []
        while race.round <= race.rounds:
            racing = race.racing()
            done, idle = race.known_results(root)  # ran this round before the race was stopped, or would add nothing
            to_run = [e for e in racing if e.name not in done]
            resume = f"resume={hydra_quoted(str(root))}"  # every round continues the jobs in their folders
            race_keys = [f"race.round={race.round}", f"race.rounds={race.rounds}", f"race.eta={race.eta}"]
            batch = [[*e.overrides, *race_keys, resume] for e in to_run]
            ran = len(racing) - len(to_run) - len(idle)
            with own_lines(root / LOG_FILE):
                log.info("race round %d of %d: %d job(s)%s%s%s", race.round, race.rounds, len(racing),
                         "" if race.round < race.rounds else ", every trial and the finalists",
                         f" ({ran} ran it before the race was stopped)" if ran else "",
                         f" ({len(idle)} would run no more trials: decided on their last results)" if idle else "",
                         )  # fmt: skip
            if batch:
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=0)
                returns.append(results)
                done.update({e.name: _returned(r) for e, r in zip(to_run, results, strict=True)})
            race.finish_round(racing, [done.get(e.name) for e in racing], root)
            race.save(root)
            with own_lines(root / LOG_FILE):
                for entry in racing:
                    log.info("  %s: %s", entry.name, entry.line(race.rounds))
        return returns

    def _objective(self, jobs: List[List[str]]) -> str:  # noqa: UP006
        """The one objective the race ranks its jobs by: jobs that optimise different metrics cannot be ranked
        against each other, so such a race is refused before it starts."""
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        found = {str(loader.load_sweep_config(self.config, overrides).tuner.objective) for overrides in jobs}
        if len(found) > 1:
            raise TlsweepError(
                f"a race ranks its jobs by one objective, but these jobs optimise {' and '.join(sorted(found))}; "
                "race them with one tuner.objective, or sweep it without hydra/sweeper=race"
            )
        return found.pop()


def _returned(result: JobReturn) -> Optional[Dict[str, Any]]:  # noqa: UP006, UP045
    """What a job returned; None when it failed (the launcher kept its exception)."""
    if result.status != JobStatus.COMPLETED:
        return None
    value = result.return_value
    return value if isinstance(value, dict) else None
