"""MkDocs hook: the configuration reference, written from the one declaration of every setting.

``<!-- config-groups -->`` becomes a table of the config groups in ``conf/`` and their options (each option's
first comment line), and ``<!-- config-keys -->`` a table per group of every key of ``tlsweep.spec.JobSpec``:
its type, its default and the comment beside its field. The page cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("dataset", "backbone", "augmentation", "optimizer", "finetune", "search", "tuner", "pruning", "experiment")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if "<!-- config-groups -->" in markdown:
        markdown = markdown.replace("<!-- config-groups -->", group_table())
    if "<!-- config-keys -->" in markdown:
        markdown = markdown.replace("<!-- config-keys -->", key_tables())
    return markdown


def group_table() -> str:
    rows = ["| group | option | what it is |", "|---|---|---|"]
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            rows.append(f"| `{group}` | `{path.stem}` | {_cell(_first_comment(path))} |")
    return "\n".join(rows)


def key_tables() -> str:
    from tlsweep.spec import JobSpec

    top, sections = [], []
    for f, hint, comment in _fields(JobSpec):
        if dataclasses.is_dataclass(hint):
            rows = [f"| `{f.name}.{g.name}` | `{_type(h)}` | `{_default(g)}` | {_cell(c)} |"
                    for g, h, c in _fields(hint)]  # fmt: skip
            title = f"### `{f.name}`\n\n{_cell(comment)}.\n\n" if comment else f"### `{f.name}`\n\n"
            sections.append(title + _table(rows))
        else:
            top.append(f"| `{f.name}` | `{_type(hint)}` | `{_default(f)}` | {_cell(comment)} |")
    return "### Top-level settings\n\n" + _table(top) + "\n\n" + "\n\n".join(sections)


def _table(rows: list[str]) -> str:
    return "\n".join(["| key | type | default | what it does |", "|---|---|---|---|", *rows])


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any, str]]:
    """Each field of a dataclass, its resolved type, and the comment written beside it in the source."""
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    return [(f, hints[f.name], comments.get(f.name, "")) for f in dataclasses.fields(cls)]


def _comments(cls: type) -> dict[str, str]:
    """``field: type = default  # comment`` (and comment lines right below it) → {field: comment}."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            parts = [lines[node.end_lineno - 1].partition("  # ")[2]]
            following = node.end_lineno
            while following < len(lines) and lines[following].strip().startswith("# "):
                parts.append(lines[following].strip()[2:])
                following += 1
            found[node.target.id] = " ".join(p.strip() for p in parts if p.strip())
    return found


def _type(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if isinstance(value, bool) or value is None:
        return {None: "null", True: "true", False: "false"}[value]
    return str(value).replace("|", "\\|")


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:]
        if line.strip() and not line.startswith("#"):
            break
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").strip().rstrip(".")
