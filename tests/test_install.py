"""The install: every module and dependency is there, and a non-editable install runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_install_works_from_another_folder(tmp_path: Path) -> None:
    site = tmp_path / "site"  # the wheel installed alone, in front of the test environment's packages
    env = {**os.environ, "PYTHONPATH": str(site)}

    def sh(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout
        return done.stdout

    dist = tmp_path / "dist"
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO))
    wheel = next(dist.glob("tlsweep-*.whl"))
    sh(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    shipped = {path.relative_to(site).as_posix() for path in (site / "tlsweep").rglob("*.py")}
    missing = sorted(
        path.relative_to(REPO).as_posix()
        for path in (REPO / "tlsweep").rglob("*.py")
        if path.relative_to(REPO).as_posix() not in shipped
    )
    assert not missing, f"modules left out of the wheel (pyproject.toml's packages): {missing}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = sys.executable
    location = sh(python, "-c", "import tlsweep, sys; print(tlsweep.__file__)", cwd=elsewhere)
    assert str(site) in location, "the test must exercise the installed copy"
    help_text = sh(python, "-m", "tlsweep", "--help", cwd=elsewhere)
    backbones = sorted(path.stem for path in (REPO / "conf" / "backbone").glob("*.yaml"))
    assert f"backbone: {', '.join(backbones)}" in help_text and "hub_resnet" in backbones
    weights = sh(
        python,
        "-c",
        "from tlsweep.tasks.images.backbones import _bundled_weights as b; print(b('tiny').stat().st_size)",
        cwd=elsewhere,
    )
    assert int(weights.split()[-1]) > 100_000  # TensorFlow may print its start-up lines first
    console = sh(str(site / "bin" / "tlsweep"), "--cfg", "job", cwd=elsewhere)
    assert "name: tiny" in console


def test_every_module_imports_and_every_backbone_config_resolves() -> None:
    """In the environment the README's install made: every module imports, and each backbone config's
    object path (a Keras factory, or TF Hub's loader for a handle) resolves, without weights."""
    import importlib
    import importlib.metadata
    import pkgutil

    import tlsweep

    for module in pkgutil.walk_packages(tlsweep.__path__, "tlsweep."):
        importlib.import_module(module.name)
    required = " ".join(importlib.metadata.requires("tlsweep") or [])
    for package in ("tensorflow", "tensorflow-hub", "keras-tuner", "tensorboard", "hydra-core"):
        assert package in required, f"{package} is not a declared dependency"

    from hydra.utils import get_method
    from omegaconf import OmegaConf

    from tlsweep.tasks.images import backbones as images
    from tlsweep.tasks.images import presets

    optional = " ".join(importlib.metadata.requires("tlsweep") or [])
    for path in sorted((REPO / "conf" / "backbone").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if cfg.get("factory"):
            assert callable(get_method(cfg.factory)), path.name
        elif "preset" in cfg or cfg.get("weights") == "preset":  # a KerasHub preset: the keras-hub extra's
            extra = [r for r in importlib.metadata.requires("tlsweep") or [] if 'extra == "keras-hub"' in r]
            assert extra and extra[0].startswith("keras-hub>=0.32"), optional
            assert callable(presets.preset_network), path.name
        else:
            assert "handle" in cfg or path.stem == "hub", path.name  # a URL, a folder, or (hub) the command line's
            hub_module = importlib.import_module("tensorflow_hub")  # what a hub handle needs at run time
            assert callable(hub_module.resolve) and callable(images.hub_network), path.name


def test_every_package_tlsweep_imports_is_a_declared_dependency() -> None:
    """A package that arrives only through another one (scipy through scikit-learn) can vanish with it."""
    import ast
    import importlib.metadata
    import re
    import sys

    declared = {
        re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower().replace("_", "-")
        for r in importlib.metadata.requires("tlsweep") or []
    }
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (REPO / "tlsweep").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "tlsweep"}
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not any(d.lower().replace("_", "-") in declared for d in distributions.get(module, [module]))
    }
    assert not undeclared, f"imported by tlsweep but not declared in pyproject.toml: {undeclared}"
