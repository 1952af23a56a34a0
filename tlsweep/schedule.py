"""When things run: the epochs of each stage, KerasTuner's Hyperband schedule, and a job's time budget."""

from __future__ import annotations

import math
import re
from typing import Any

StagePlan = list[tuple[str, int, int]]  # (stage, first epoch, end epoch) of each fit, on one epoch axis


def hyperband_schedule(max_epochs: int, factor: int, iterations: int) -> list[tuple[int, int]]:
    """(epochs, initial_epoch) of each trial KerasTuner's Hyperband runs, in the order it runs them.

    KerasTuner keeps this arithmetic inside its ``HyperbandOracle`` (``_get_num_brackets``,
    ``_get_size``, ``_get_epochs``); tlsweep needs it before a tuner exists, to plan the cache and
    the budget. ``tests/test_one_path.py`` checks it against the oracle, so a change there fails loudly.
    Random draws that collide can end a search sooner; this is the most it runs.
    """
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))

    def size(bracket: int, rung: int) -> int:
        return math.ceil(end_size / (bracket + 1) * factor ** (bracket - rung))

    def budget(bracket: int, rung: int) -> int:
        return math.ceil(max_epochs / factor ** (bracket - rung))

    runs = []
    for _ in range(iterations):
        for bracket in reversed(range(brackets)):
            for rung in range(bracket + 1):
                runs += [(budget(bracket, rung), budget(bracket, rung - 1) if rung else 0)] * size(bracket, rung)
    return runs


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def budget_seconds(budget: Any) -> float | None:
    """``budget``'s seconds: a number of seconds, or a duration such as ``90s``, ``30m``, ``2h`` or ``1h30m``;
    None for no budget. Raises ValueError for anything else."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        text = str(budget).strip().lower().replace(" ", "")
        match = DURATION.fullmatch(text)
        if not text or not match or not any(match.groups()):
            raise ValueError(budget)
        hours, minutes, secs = (float(g or 0) for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(budget)
    return seconds
