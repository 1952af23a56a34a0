"""The search space: ``search.params`` in Hydra's sweep grammar, run by KerasTuner inside a job.

Hydra users write a search space for Hydra's own sweepers (Optuna, Nevergrad, Ax) as
``interval(0.1, 0.5)``, ``tag(log, interval(1e-5, 1e-2))``, ``int(interval(8, 64))``,
``range(0, 60, 12)`` or ``choice(adam, sgd)``; KerasTuner users know ``hp.Float``, ``hp.Int`` and
``hp.Choice``. ``search.params`` maps any trial-level setting (a ``finetune.*`` knob) to such an
expression, and each becomes one ``Knob``, declared on KerasTuner's ``hp`` by the trial. A plain value
pins the knob. The expressions are parsed by Hydra's own override parser, so they mean what they mean
to Hydra; tlsweep takes them off the command line before Hydra does (``tlsweep.config``), so they never
become Hydra jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tlsweep.errors import TlsweepError

GRAMMAR = "interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), range(start, stop, step), choice(a, b, …)"


@dataclass(frozen=True)
class Knob:
    """One searched (or pinned) setting: how KerasTuner draws its value for each trial."""

    key: str  # the setting, e.g. finetune.dropout: also the hyperparameter's name in records and reports
    kind: str  # float | int | choice | fixed
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()  # a choice's values, or a fixed knob's one value
    expression: str = ""  # as the user wrote it

    @property
    def name(self) -> str:
        """The setting's name in its group (``dropout`` of ``finetune.dropout``)."""
        return self.key.rpartition(".")[2]

    @property
    def continuous(self) -> bool:
        return self.kind == "float" and self.step is None

    def candidates(self) -> tuple[Any, ...]:
        """Values that bound what the knob can take, to check against the setting's own rules: a choice's
        every value, an interval's ends."""
        return self.values if self.kind in ("choice", "fixed") else (self.low, self.high)

    def every_value(self) -> tuple[Any, ...] | None:
        """Every value the knob can take when there are finitely many (a whole-number interval's too)."""
        if self.kind in ("choice", "fixed"):
            return self.values
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def declare(self, hp: Any, log_step: float | None = None) -> Any:
        """Declare the knob on KerasTuner's ``hp`` and return this trial's value. ``log_step``: the grid
        tuner's factor between the points of a log interval (a continuous interval has no grid)."""
        if self.kind == "fixed":
            return hp.Fixed(self.key, self.values[0])
        if self.kind == "choice":
            return hp.Choice(self.key, list(self.values))
        sampling = "log" if self.log else "linear"
        if self.kind == "int" and self.log:  # KerasTuner's log step is a factor (> 1): the grid's, or none
            factor = max(2, round(log_step)) if log_step else None  # whole numbers: a factor of 2 at the least
            return hp.Int(self.key, int(self.low), int(self.high), step=factor, sampling=sampling)
        if self.kind == "int":
            return hp.Int(self.key, int(self.low), int(self.high), step=int(self.step or 1), sampling=sampling)
        step = self.step if self.step is not None else (log_step if self.log else None)
        return hp.Float(self.key, self.low, self.high, step=step, sampling=sampling)


def parse_knob(key: str, expression: Any) -> Knob:
    """The knob ``search.params.<key>=<expression>`` declares; TlsweepError naming it when the expression
    is not Hydra's sweep grammar or not a search space."""
    if not isinstance(expression, str):  # a plain value from a config file pins the knob
        return Knob(key, "fixed", values=(expression,), expression=repr(expression))
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException, OverrideParseException

    where = f"search.params.{key}={expression}"
    try:
        value = OverridesParser.create().parse_override(f"key={expression}").value()
    except (OverrideParseException, HydraException) as e:
        raise TlsweepError(f"{where} is not Hydra's sweep grammar ({_first(e)}); use one of: {GRAMMAR}") from None
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise TlsweepError(f"{where}: an interval needs its lower end first, e.g. interval(0.1, 0.5)")
        log = "log" in value.tags
        if log and low <= 0:
            raise TlsweepError(f"{where}: a log interval needs positive ends, e.g. tag(log, interval(1e-5, 1e-2))")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Knob(key, kind, float(low), float(high), log, expression=expression)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        values = list(_range(start, stop, step))
        if not values:
            raise TlsweepError(f"{where} holds no value (its stop is not past its start)")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return Knob(key, "int", values[0], values[-1], step=step, expression=expression)
        return Knob(key, "choice", values=tuple(float(v) for v in values), expression=expression)
    if isinstance(value, ChoiceSweep):
        values = _same_type(list(value.list), where)
        if not values:
            raise TlsweepError(f"{where} offers nothing to choose from")
        return Knob(key, "choice", values=tuple(dict.fromkeys(values)), expression=expression)
    if isinstance(value, (list, dict)):
        raise TlsweepError(f"{where}: a list is no search space; write choice(a, b) for a choice between values")
    if "tag" in expression or "interval" in expression:
        raise TlsweepError(f"{where}: use one of: {GRAMMAR}")
    return Knob(key, "fixed", values=(value,), expression=expression)


def _range(start: float, stop: float, step: float) -> list[float]:
    """Hydra's ``range``: from ``start`` up to (not including) ``stop``, every ``step``."""
    if step == 0:
        return []
    count = math.ceil(round((stop - start) / step, 9))
    return [start + i * step if isinstance(step, float) else start + i * step for i in range(max(count, 0))]


def _same_type(values: list[Any], where: str) -> list[Any]:
    """A choice's values of one kind, as KerasTuner's ``Choice`` takes them (whole numbers and decimals
    together become decimals)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and any(isinstance(v, float) for v in values):
        return [float(v) for v in values]
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise TlsweepError(f"{where} mixes kinds of values ({', '.join(sorted(k.__name__ for k in kinds))})")
    return values


def _first(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """``{finetune: {dropout: …}}`` → ``{finetune.dropout: …}``: the keys as the command line names them."""
    if not isinstance(params, dict):
        return {}
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
