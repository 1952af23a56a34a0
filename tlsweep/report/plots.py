"""The report's plots, as PNG bytes: matplotlib figures drawn off-screen (no display, no pyplot state)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlsweep.records import DEPTH
from tlsweep.results import Trial

OPTIMIZER = "finetune.optimizer"

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MAX_LEGEND = 8  # beyond this many series, the rest share one grey "other" entry


def curves(trials: Sequence[tuple[str, Trial]]) -> bytes:
    """Train (dashed) and validation (solid) loss and accuracy of ``(label, trial)``; stage 2 starts at ':'."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (label, trial) in enumerate(trials):
        colour = COLOURS[i % len(COLOURS)]
        history = trial.run.history
        epochs = [e.epoch for e in history]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [_nan(e.metric(key)) for e in history], "--", color=colour, alpha=0.6, linewidth=1)
            ax.plot(epochs, [_nan(e.metric(f"val_{key}")) for e in history], "-", color=colour, label=_text(label))
            boundary = next((e.epoch - 0.5 for e in history if e.stage == "finetune"), None)
            if boundary is not None:
                ax.axvline(boundary, color=colour, linestyle=":", linewidth=1)
            kept = trial.run.epoch(trial.run.best_epoch)
            if kept is not None:
                ax.plot([kept.epoch], [_nan(kept.metric(f"val_{key}"))], "o", color=colour, markersize=5)
    ax_loss.set(title="loss (dashed: train, solid: validation)", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy (dotted line: stage 2 starts, dot: kept epoch)", xlabel="epoch", ylabel="accuracy")
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def knob(rows: Sequence[dict[str, Any]], key: str, metric: str) -> bytes:
    """``metric`` against a searched number (``finetune.learning_rate``, ``finetune.dropout``, …), on a log scale
    where its values span two decades or more: one colour per optimizer and, in a sweep, one marker per job,
    so the other choices can be told apart."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    optimizers = [name for name, _ in _series(rows, OPTIMIZER)]
    colours = {name: COLOURS[i] if i < MAX_LEGEND else "#999999" for i, name in enumerate(optimizers)}
    jobs = _series(rows, "job")
    for j, (job, in_job) in enumerate(jobs):
        marker = MARKERS[j % len(MARKERS)] if len(jobs) > 1 else "o"
        for optimizer, members in _series(in_job, OPTIMIZER):
            label = optimizer if len(jobs) == 1 else f"{job}, {optimizer}"
            ax.scatter([r[key] for r in members], [r[metric] for r in members], color=colours.get(optimizer, "#999999"),
                       marker=marker, label=_text(label))  # fmt: skip
    values = [float(r[key]) for r in rows]
    if min(values) > 0 and max(values) >= 100 * min(values):
        ax.set_xscale("log")
    note = " (stage 1; stage 2 uses it × finetune.lr_scale)" if key.endswith("learning_rate") else ""
    ax.set(xlabel=f"{key}{note}", ylabel=metric)
    ax.set_title(f"{metric} by {key} and optimizer" + (" (marker: job)" if len(jobs) > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def unfreeze_depth(rows: Sequence[dict[str, Any]], metric: str) -> bytes:
    """``metric`` against the unfreeze depth, one colour per backbone; the line joins each depth's best."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    maximize = not metric.endswith("loss")
    for i, (name, members) in enumerate(_series(rows, "backbone")):
        colour = COLOURS[i] if i < MAX_LEGEND else "#999999"
        depths = sorted({int(r[DEPTH]) for r in members})
        best = [(max if maximize else min)(r[metric] for r in members if int(r[DEPTH]) == d) for d in depths]
        ax.scatter([int(r[DEPTH]) for r in members], [r[metric] for r in members], color=colour, alpha=0.5)
        ax.plot(depths, best, "-o", color=colour, label=_text(name))
    ax.set_xticks(sorted({int(r[DEPTH]) for r in rows}))
    ax.set(xlabel="layers unfrozen in stage 2 (0: head only)", ylabel=metric)
    ax.set_title(f"{metric} by unfreeze depth and backbone (line: best)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by ``key``; groups past ``MAX_LEGEND`` are merged into one "other" series."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(key)), []).append(row)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    if len(ordered) > MAX_LEGEND:
        other = [r for _, members in ordered[MAX_LEGEND:] for r in members]
        ordered = [*ordered[:MAX_LEGEND], (f"{len(ordered) - MAX_LEGEND} others", other)]
    return ordered


def _text(label: str) -> str:
    """User text shown literally (a ``$`` would start matplotlib's math mode)."""
    return str(label).replace("$", r"\$")


def _nan(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
