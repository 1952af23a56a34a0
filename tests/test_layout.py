"""The code reads as the pipeline: each module imports only modules before it, so there is no circle."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# config → data → backbone → model → trial → tuner → records → finalists → job → export → report, with the
# helpers each step needs before it. A module may import any module listed before it, none after.
PIPELINE = [
    "errors", "settings", "files", "cache.store", "console", "interrupt", "config", "paths",
    "data", "hub", "kerashub", "backbones", "augment", "model", "cache.plan", "cache.features", "cache", "batches",
    "logs", "stopping", "trial", "tuners", "records", "finalists", "identity", "device", "job",
    "evaluate", "export", "predict", "weights", "cache.__main__",
    "report.plots", "report.summary", "report.render", "report", "report.__main__",
    "callbacks", "__main__",
]  # fmt: skip


def imports(path: Path) -> set[str]:
    """The tlsweep modules ``path`` imports, anywhere in it (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlsweep"):
            module = node.module.removeprefix("tlsweep").lstrip(".")
            for alias in node.names:  # `from tlsweep.report import plots` imports the module report.plots
                submodule = f"{module}.{alias.name}".lstrip(".")
                found.add(submodule if submodule in PIPELINE else module)
    return found


def test_every_module_imports_only_modules_before_it_in_the_pipeline() -> None:
    package = REPO / "tlsweep"
    modules = {
        ".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
        if p.name != "__init__.py" or p.parent != package  # the package's face (__version__, load_tuner)
    }
    assert sorted(modules) == sorted(PIPELINE), "a module was added or removed: place it in PIPELINE"
    for name, path in modules.items():
        later = [m for m in imports(path) if m in PIPELINE and PIPELINE.index(m) > PIPELINE.index(name)]
        assert not later, f"tlsweep.{name} imports {later}, which come after it in the pipeline"
