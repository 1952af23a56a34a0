"""Result files are written atomically with the permissions the user's umask allows."""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path

import pytest

from tlsweep import files


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_the_umask_allows(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        module = importlib.reload(files)  # reads the umask as a process starting under it would
        module.write_text(tmp_path / "report.md", "text")
        module.write_json(tmp_path / "trials" / "trial_0.json", {"a": 1})
        module.atomic_write(tmp_path / "best.keras", lambda tmp: tmp.write_bytes(b"model"), suffix=".keras")
    finally:
        os.umask(old)
        importlib.reload(files)
    for name in ("report.md", "trials/trial_0.json", "best.keras"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    files.write_text(tmp_path / "job.json", "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "job.json", fail)
    assert (tmp_path / "job.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
