"""A non-editable install ships the configs and the bundled weights, and runs from any folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_install_works_from_another_folder(tmp_path: Path) -> None:
    def sh(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        assert done.returncode == 0, done.stdout
        return done.stdout

    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        str(REPO),
    )
    wheel = next((tmp_path / "dist").glob("tlsweep-*.whl"))
    sh(sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv"))
    python = str(tmp_path / "venv" / "bin" / "python")
    sh(python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = sh(python, "-c", "import tlsweep, sys; print(tlsweep.__file__)", cwd=elsewhere)
    assert str(tmp_path / "venv") in location, "the test must exercise the installed copy"
    help_text = sh(python, "-m", "tlsweep", "--help", cwd=elsewhere)
    backbones = sorted(path.stem for path in (REPO / "conf" / "backbone").glob("*.yaml"))
    assert f"backbone: {', '.join(backbones)}" in help_text and "hub_resnet" in backbones
    weights = sh(
        python,
        "-c",
        "from tlsweep.backbones import _bundled_weights as b; print(b('tiny').stat().st_size)",
        cwd=elsewhere,
    )
    assert int(weights.split()[-1]) > 100_000  # TensorFlow may print its start-up lines first
    console = sh(str(tmp_path / "venv" / "bin" / "tlsweep"), "--cfg", "job", cwd=elsewhere)
    assert "name: tiny" in console
