"""The front page, the user guide and the example notebook: built, linked and run, so they cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_the_user_guide_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, a page missing from the navigation, an API page whose
    object is gone, fails it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "tlsweep.api.sweep" in api and "Run python -m tlsweep" in re.sub(r"<[^>]+>", "", api)
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    assert "finetune.label_smoothing" in config and "text_table" in config  # written from the spec and conf/


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to the guide"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    assert 'pip install -e ".[dev]" && python -m pytest' in readme  # the command CI runs


def test_the_notebook_is_kept_without_outputs() -> None:
    """Its numbers come from running it, never from a stored copy that could be stale."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    where = {"metadata": {"path": str(tmp_path)}}  # the notebook's outputs/ go there
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where).execute()
    shown = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            shown.append(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")))
    text = "\n".join(shown)
    assert re.search(r"^best: trial_\d+ val_accuracy", text, re.M), text[:3000]
    assert "Traceback" not in text and "error:" not in text
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run / "best" / "model.keras").is_file()
    assert "new_digits/" in text  # the predictions table, one row per new image
