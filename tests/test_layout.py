"""The code reads as the pipeline: each module imports only modules before it, so there is no circle."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# records at the bottom, then config → data → backbone → model → the tasks → cache → trial → tuner → job → export →
# report, with the helpers each step needs before it. A module may import any module listed before it, none after.
# Each task (images, text) adds its own modules after the shared ones it builds on, and nothing shared imports them
# but the tasks' registry (``tasks``).
PIPELINE = [
    "errors", "files", "interrupt", "console", "progress", "objective", "records", "race", "results",
    "schedule", "space", "groups", "spec", "schema", "config", "paths",
    "cache.store", "folders", "data",
    "hub", "kerashub", "backbone", "model",
    "tasks.images.decode", "tasks.images.augment", "tasks.images.data", "tasks.images.presets",
    "tasks.images.backbones", "tasks.images",
    "tasks.text.data", "tasks.text.encoders", "tasks.text",
    "tasks",
    "cache.plan", "cache.features", "cache", "batches",
    "logs", "stopping", "trial", "runs", "tuners", "finalists",
    "identity", "device", "job",
    "evaluate", "export", "predict", "weights", "cache.__main__",
    "report.plots", "report.summary", "report.render", "report", "report.__main__",
    "callbacks", "api", "__main__",
]  # fmt: skip
# The config stays Hydra's in the config layer: after it, code reads the typed spec (tlsweep.spec).
CONFIG_LAYER_ENDS = "paths"


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
        if p.name != "__init__.py" or p.parent != package  # the package's face (__version__, sweep, load)
    }
    assert sorted(modules) == sorted(PIPELINE), "a module was added or removed: place it in PIPELINE"
    for name, path in modules.items():
        later = [m for m in imports(path) if m in PIPELINE and PIPELINE.index(m) > PIPELINE.index(name)]
        assert not later, f"tlsweep.{name} imports {later}, which come after it in the pipeline"


def test_only_the_config_layer_imports_omegaconf() -> None:
    """OmegaConf's config is read by the config layer (up to ``paths``) and the entry point that hands Hydra's
    config to it; every module after it reads the typed, frozen spec."""
    package = REPO / "tlsweep"
    found = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(n.split(".")[0] == "omegaconf" for n in names):
                found.add(".".join(path.relative_to(package).with_suffix("").parts))
    after = {m for m in found if m != "__main__" and PIPELINE.index(m) > PIPELINE.index(CONFIG_LAYER_ENDS)}
    assert not after, f"{sorted(after)} read the raw config: read the spec instead"
    assert "schema" in found  # the check sees imports at all: the schema is OmegaConf's


def test_no_module_is_longer_than_450_lines() -> None:
    long = {p.name: n for p in (REPO / "tlsweep").rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
