"""Write a summary as ``report.html`` (self-contained), ``report.md`` and ``trials.csv``, each atomically."""

from __future__ import annotations

import base64
import csv
import io
import math
import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from tlsweep import files
from tlsweep.config import rerun_command
from tlsweep.data import imbalance_warning
from tlsweep.progress import count
from tlsweep.records import DEPTH
from tlsweep.report import plots
from tlsweep.report.summary import Summary, accuracy_interval

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
TRIALS_CSV = "trials.csv"
MAX_CLASSES_SHOWN = 12


def write_all(summary: Summary, root: Path, top: int) -> dict[str, Path]:
    """Write the three files into ``root``; returns their paths by kind."""
    context = _context(summary, top)
    paths = {"html": root / REPORT_HTML, "md": root / REPORT_MD, "csv": root / TRIALS_CSV}
    files.write_text(paths["csv"], to_csv(summary))
    files.write_text(paths["md"], to_markdown(context))
    files.write_text(paths["html"], to_html(context, summary, top))
    return paths


def to_csv(summary: Summary) -> str:
    """One row per trial with every column of the report's table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=summary.table.columns, lineterminator="\n")
    writer.writeheader()
    for row in summary.table.rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _context(summary: Summary, top: int) -> dict[str, Any]:
    """Everything both the HTML and the Markdown report show, as plain values."""
    sweep = summary.sweep
    headline = _headline(summary)
    statuses: dict[str, int] = {}
    for _, trial in sweep.trials:
        statuses[trial.status] = statuses.get(trial.status, 0) + 1
    jobs = [
        {
            "name": job.name,
            "state": job.status,  # the row's style
            "status": job.status
            + (f", stopped by the budget after {count(job.record.get('trials'), 'trial')}" if _stopped(job) else ""),
            "trials": len(job.trials),
            "completed": sum(t.status == "completed" for t in job.trials),
            "best": _fmt(next((r[summary.metric] for r in summary.ranked if r["job"] == job.name), None)),
            "duration": _fmt(job.record.duration_s, "duration_s"),
            "classes": _classes(job.classes),
            "error": job.error or "",
            "race": sweep.race_line(job),
        }
        for job in sweep.jobs
    ]
    return {
        "root": str(sweep.root.resolve()),
        "one_job": len(sweep.jobs) == 1,
        "generated": datetime.now().astimezone().isoformat(timespec="seconds"),
        "objective": summary.objective,
        "metric": summary.metric,
        "headline": headline,
        "jobs": jobs,
        "trial_counts": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none yet",
        "effects": summary.effects,
        "finalists": [{**f.__dict__, "name": _name(summary, f.job, f.trial)} for f in summary.finalists],
        "not_finalists": summary.not_finalists,
        "noise_told": any(e.noise for e in summary.effects),
        "warnings": summary.warnings,
        "columns": summary.shown_columns,
        "constants": {k: _fmt(v, k) for k, v in summary.constants.items()},
        "rows": summary.table.rows,
        "top": top,
        "recall": _recall(summary, top),
        "balance": [
            f"{job.name}: {warning}"
            for job in sweep.jobs
            if (warning := imbalance_warning(job.record.get("class_counts") or [], summary.objective))
        ],
        "logdir": shlex.quote(str(sweep.root.resolve())),
        "export": _export(sweep),
        "damaged": sweep.damaged,  # named relative to the root
        "race": _race(sweep),
    }


def _race(sweep: Any) -> dict[str, Any] | None:
    """The race, round by round: each job's trials and best value at the end of each round, and its fate."""
    race = sweep.race
    if race is None:
        return None
    rows = []
    for entry in race.entries:
        laps = {lap.round: f"{_fmt(lap.value)} ({lap.trials or 'all'} trials)" for lap in entry.laps}
        rows.append({"name": entry.name, "laps": [laps.get(r, "") for r in range(1, race.rounds + 1)],
                     "fate": entry.line(race.rounds)})  # fmt: skip
    return {"rounds": race.rounds, "eta": race.eta, "rows": rows}


def _recall(summary: Summary, top: int) -> dict[str, Any] | None:
    """Each class's recall on the validation images for the best trials, with the weights each kept."""
    rows = []
    for row in summary.ranked[:top]:
        job = next(j for j in summary.sweep.jobs if j.name == row["job"])
        trial = next(t for t in job.trials if t.trial_id == row["trial"])
        recall = trial.run.val_recall
        if recall and len(recall) == len(job.classes):
            shown = [_fmt(r) if r is not None else "n/a" for r in recall]
            rows.append({"name": _name(summary, job.name, trial.trial_id), "classes": job.classes, "recall": shown})
    if not rows:
        return None
    classes = rows[0]["classes"]
    return {"classes": classes if all(r["classes"] == classes for r in rows) else None, "rows": rows}


def _stopped(job: Any) -> bool:
    """Whether the job's time budget stopped its search."""
    return bool(job.record.get("stopped_by_budget"))


def _export(sweep: Any) -> dict[str, Any] | None:
    """The exported best model and its held-out test, when the export ran."""
    if not sweep.export:
        return None
    folder = sweep.root / files.EXPORT_DIR
    noun = "texts" if sweep.export.get("task") == "text" else "images"  # what the model classifies
    context: dict[str, Any] = {
        "folder": str(folder),
        "formats": ", ".join(sweep.export.get("formats", {}).values()),
        "model": f"{sweep.export.get('job')} trial_{sweep.export.get('trial')}",
        "predict": f"python -m tlsweep.predict {shlex.quote(str(folder))} path/to/{noun}",
        "noun": noun,
        "test": None,
    }
    evaluation = sweep.evaluation
    if evaluation and evaluation.get("images"):
        low, high = accuracy_interval(evaluation["accuracy"], evaluation["images"])
        names = [c["name"] for c in evaluation["classes"]]
        context["test"] = {
            "accuracy": evaluation["accuracy"],
            "images": evaluation["images"],
            "interval": f"95% interval {low:.3f}–{high:.3f}",
            "classes": evaluation["classes"],
            "names": names,
            "confusion": list(zip(names, evaluation["confusion"], strict=True)),
        }
    return context


def _headline(summary: Summary) -> dict[str, Any] | None:
    """The answer first: the configuration's mean over seeds with the interval of that mean; then the model
    that ships, with its own single value and that value's interval for the number of validation images."""
    winner, best = summary.winner, summary.best
    if winner is None or best is None:
        return None
    job, run = winner.job, winner.run
    prefix = "" if len(summary.sweep.jobs) == 1 else f"{job.name} "
    interval = _interval(best, summary.metric, job.val_images)
    over, shipped = "", ""
    if winner.group is not None:
        low, high = winner.group.interval
        over = f"on average over {len(winner.group.values)} seeds"
        model = "the seed closest to the mean" if not winner.refit else "its refit"
        shipped = f"Model shipped: {prefix}trial_{run.trial_id}, {model}: {summary.metric} {_fmt(best[summary.metric])}"
        shipped += f" ({interval})" if interval else ""
        interval = f"95% interval of the mean over seeds: {_fmt(low)}–{_fmt(high)}"
    if winner.refit:
        epochs = winner.model.run.best_epoch
        shipped = (
            f"Model shipped: {prefix}trial_{winner.model.trial_id}, trial_{run.trial_id}'s configuration retrained on "
            f"training + validation images for {epochs} epochs (nothing held out: it has no validation score)"
        )
    hyperparameters = run.run.hyperparameters
    return {
        "name": f"{prefix}{winner.name}",
        "value": winner.value,
        "over": over,
        "interval": interval,
        "shipped": shipped,
        "setup": {k: best[k] for k in summary.setup_columns if best.get(k) is not None},
        "hyperparameters": {k: _fmt(v, k) for k, v in hyperparameters.items()},
        "best_epoch": best["best_epoch"],
        "best_stage": best["best_stage"],
        "stage2": best["stage2"],
        "command": rerun_command(job.overrides, run.run),
        "runner_up": _verdict(summary) if summary.finalists else _runner_up(summary),
    }


def _interval(row: dict[str, Any], metric: str, n: int | None) -> str:
    value = row[metric]
    if metric not in ("val_accuracy", "train_accuracy") or not n or value is None:  # binomial: plain accuracy only
        return ""
    low, high = accuracy_interval(value, n)
    return f"95% interval for {n} validation images: {low:.3f}–{high:.3f}"


def _span(finalist: dict[str, Any]) -> str:
    return f"{_fmt(finalist['low'])}–{_fmt(finalist['high'])}"


def _verdict(summary: Summary) -> str:
    """In plain words: which finalists the winner beat beyond seed noise, and which it did not."""
    first, *others = summary.finalists
    name = _name(summary, first.job, first.trial)
    close = [_name(summary, f.job, f.trial) for f in others if f.verdict == "within noise of the best"]
    if not others:
        return f"{name} is best; it was the only finalist"
    if not close:
        return f"{name} is best, beyond seed noise of every other finalist"
    return f"{name} is best; {', '.join(close)} {'is' if len(close) == 1 else 'are'} within seed noise of it"


def _name(summary: Summary, job: str, trial: str) -> str:
    return f"trial_{trial}" if len(summary.sweep.jobs) == 1 else f"{job} trial_{trial}"


def _runner_up(summary: Summary) -> str:
    """How far the second-best trial is, to say how clear the winner is."""
    if len(summary.ranked) < 2:
        return ""
    first, second = summary.ranked[0], summary.ranked[1]
    gap = abs(first[summary.metric] - second[summary.metric])
    return f"runner-up: {second['job']} trial_{second['trial']}, {gap:.4f} behind"


def _classes(classes: list[str]) -> str:
    shown = ", ".join(classes[:MAX_CLASSES_SHOWN])
    return f"{shown}, … ({len(classes)} classes)" if len(classes) > MAX_CLASSES_SHOWN else shown


def _fmt(value: Any, key: str = "") -> str:
    """A display form with fixed decimals: 4 for metrics, 1 for seconds, 3 significant digits for learning rates."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if key.endswith("learning_rate") or (value != 0 and abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.1f}" if key.endswith("_s") else f"{value:.4f}"
    return str(value)


def to_markdown(context: dict[str, Any]) -> str:
    """The headline and the tables, for a terminal or a pull request."""
    lines = [f"# tlsweep report: {_md(context['root'])}", "", f"Generated {context['generated']}.", ""]
    h = context["headline"]
    if h:
        lines += [
            f"**Best: {_md(h['name'])} — {context['metric']} {_fmt(h['value'])}"
            + (f" {h['over']}" if h["over"] else "")
            + "**"
            + (f" ({h['interval']})" if h["interval"] else ""),
            "",
            *([f"- {_md(h['shipped'])}"] if h["shipped"] else []),
            *[f"- {_md(k)}: {_md(_fmt(v))}" for k, v in {**h["setup"], **h["hyperparameters"]}.items()],
            f"- kept epoch {h['best_epoch']} ({h['best_stage']}); stage 2: {h['stage2']}",
            *([f"- {_md(h['runner_up'])}"] if h["runner_up"] else []),
            "",
            "Reproduce:",
            "",
            "```",
            h["command"],
            "```",
            "",
        ]
    else:
        lines += ["No trial has completed yet.", ""]
    if context["damaged"]:
        lines += ["## Files that could not be read", "", *[f"- {_md(d)}" for d in context["damaged"]], ""]
    lines += _md_export(context["export"])
    lines += ["## Jobs", "", f"Trials: {context['trial_counts']}.", ""]
    if context["constants"]:
        same = ", ".join(f"{k}={v}" for k, v in context["constants"].items())
        lines += [f"The same in every trial: {_md(same)}.", ""]
    lines += _md_table(
        ["job", "status", "trials", "completed", f"best {context['metric']}", "duration_s", "classes", "error"],
        [
            [j["name"], j["status"], j["trials"], j["completed"], j["best"], j["duration"], j["classes"], j["error"]]
            for j in context["jobs"]
        ],
    )
    if context["race"]:
        race = context["race"]
        lines += ["", f"## Race: {race['rounds']} rounds, each keeping the best 1/{race['eta']} of the jobs", ""]
        header = ["job", *(f"round {r}" for r in range(1, race["rounds"] + 1)), "what the race did"]
        lines += _md_table(header, [[r["name"], *r["laps"], r["fate"]] for r in race["rows"]])
    if context["finalists"]:
        lines += ["", f"## Finalists: the best configurations over several seeds ({context['metric']})", ""]
        lines += _md_table(
            ["configuration", "seeds", "mean", "95% interval of the mean", "worst", "best", "verdict"],
            [
                [f["name"], f["runs"], f["mean"], _span(f), f["worst"], f["best"], f["verdict"]]
                for f in context["finalists"]
            ],
        )
        if context["not_finalists"]:
            lines += ["", f"Not finalists, one run beyond noise below the best: {'; '.join(context['not_finalists'])}."]
    if context["effects"]:
        lines += ["", f"## Effect of each choice ({context['metric']})", ""]
        noise = ["vs the group's best"] if context["noise_told"] else []
        lines += _md_table(
            ["group", "value", "trials", "best", "median", "worst", "best trial", *noise],
            [
                [e.group, e.value, e.trials, e.best, e.median, e.worst, e.best_trial, *([e.noise] if noise else [])]
                for e in context["effects"]
            ],
        )
    recall = context["recall"]
    if recall or context["balance"]:
        lines += ["", "## Classes: recall of the best trials", ""]
        lines += [f"- {_md(w)}" for w in context["balance"]] + ([""] if context["balance"] else [])
    if recall and recall["classes"]:
        lines += _md_table(["trial", *recall["classes"]], [[r["name"], *r["recall"]] for r in recall["rows"]])
    elif recall:
        rows = [
            [r["name"], ", ".join(f"{c} {v}" for c, v in zip(r["classes"], r["recall"], strict=True))]
            for r in recall["rows"]
        ]
        lines += _md_table(["trial", "recall per class"], rows)
    if context["warnings"]:
        lines += ["", "## Overfitting", "", *[f"- {_md(w)}" for w in context["warnings"]]]
    columns = [c for c in context["columns"] if c not in ("tensorboard", "overfitting")]
    lines += ["", "## All trials", ""]
    lines += _md_table(columns, [[_fmt(r[c], c) for c in columns] for r in context["rows"]])
    lines += ["", "## TensorBoard", "", "```", f"tensorboard --logdir {context['logdir']}", "```", ""]
    return "\n".join(lines)


def _md_export(export: dict[str, Any] | None) -> list[str]:
    if not export:
        return []
    lines = ["## Best model, exported", "", f"{_md(export['model'])} in {_md(export['folder'])}: {export['formats']}."]
    test = export["test"]
    if test:
        lines += [
            "",
            f"Held-out test: accuracy **{_fmt(test['accuracy'])}** on {test['images']} {export['noun']} "
            f"({test['interval']}).",
            "",
        ]
        lines += _md_table(
            ["class", "precision", "recall", export["noun"]],
            [[c["name"], c["precision"], c["recall"], c["images"]] for c in test["classes"]],
        )
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
        lines += _md_table(["", *test["names"]], [[name, *counts] for name, counts in test["confusion"]])
    else:
        lines += ["", "No held-out test set (dataset.test_split or a test/ folder gives one)."]
    return [*lines, "", "Predict:", "", "```", export["predict"], "```", ""]


def _md(text: Any) -> str:
    """Markdown-safe text that still reads as itself in a terminal: no table-breaking pipes or
    newlines, and ``<`` escaped with a backslash, not as an HTML entity, so no tag is formed."""
    escaped = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return escaped.replace("<", "\\<").replace(">", "\\>").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(_fmt(c)) for c in row) + " |" for row in rows]
    return lines


def to_html(context: dict[str, Any], summary: Summary, top: int) -> str:
    """One self-contained page: inline CSS, inline sorting script, plots as data URIs."""
    return _templates().get_template("report.html.j2").render(**context, plots=_plots(summary, top))


def summary_html(summary: Summary) -> str:
    """The report's answer in a few lines of HTML (its headline, the finalists, the held-out test): what a
    notebook shows of a result (``tlsweep.Result``)."""
    context = _context(summary, 0)
    kind = "run" if context["one_job"] else "sweep"
    return _templates().get_template("summary.html.j2").render(**context, kind=kind)


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("tlsweep.report"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["fmt"] = _fmt
    environment.filters["span"] = _span
    return environment


def _plots(summary: Summary, top: int) -> list[dict[str, str]]:
    """The plots the data allows, as ``{title, src}`` with PNG data URIs."""
    ranked, metric = summary.ranked, summary.metric
    figures = []
    if ranked:
        by_key = {(j.name, t.trial_id): t for j, t in summary.sweep.trials}
        one_job = len(summary.sweep.jobs) == 1
        chosen = [
            (f"#{r['rank']} {'' if one_job else r['job'] + ' '}trial_{r['trial']}", by_key[(r["job"], r["trial"])])
            for r in ranked[:top]
        ]
        figures.append((f"Training curves of the top {len(chosen)} trials", plots.curves(chosen)))
    for key in summary.continuous:  # a setting searched on an interval: its effect as a plot
        numbers = [r for r in ranked if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if len({r[key] for r in numbers}) > 1 and key != DEPTH:
            figures.append((key, plots.knob(numbers, key, metric)))
    with_depth = [r for r in ranked if isinstance(r.get(DEPTH), (int, float))]
    if len({r[DEPTH] for r in with_depth}) > 1:
        figures.append(("Unfreeze depth per backbone", plots.unfreeze_depth(with_depth, metric)))
    return [
        {"title": title, "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}
        for title, png in figures
    ]
