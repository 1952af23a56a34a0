"""Arrays on disk by key, shared by every job and sweep that uses the same cache folder.

A key is a hash of everything that determines its arrays. Arrays are written row block by row
block as they are computed (never whole in memory), each with a SHA-256 checked when a job loads
it, into a staging folder renamed into place when complete: two processes building the same key
both write whole copies, and either result is good. Each use touches the key's ``used`` file, so
the folder can be kept under a size limit by evicting the keys used least recently
(``python -m tlsweep.cache list|clear`` shows and empties it).

This module imports no TensorFlow: listing and clearing the cache are instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlsweep.errors import TlsweepError, is_disk_full
from tlsweep.files import FILE_MODE, process_alive

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when what is stored changes (3: streamed rows, pooled head features, use stamps)
DONE = "done.json"  # written last: a key folder without it is not complete
USED = "used"  # its modification time is when a job last used the key


class DiskArray:
    """A ``.npy`` array read row by row with ``os.pread``: a batch costs its own bytes of memory.

    Unlike ``np.memmap``, the pages read are the kernel's file cache, not this process's memory, so
    a cache bigger than memory is read without growing the process and without a kill.
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path.name} is stored in Fortran order")
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __getitem__(self, rows: Any) -> np.ndarray:
        """Rows by a slice or by an array of indices, as a new array in memory."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step == 1:
                return self._read(start, max(stop - start, 0))
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for i, row in enumerate(rows):
            out[i] = self._read(int(row), 1)[0]
        return out

    def _read(self, start: int, count: int) -> np.ndarray:
        data = os.pread(self._fd, count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(count, *self.shape[1:]).copy()


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file declares, without reading its data."""
    array = DiskArray(path)
    return array.shape, array.dtype


class Writer:
    """Rows appended to one array file in order; the checksum is computed as they go."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.rows = 0
        self._digest = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 (closed by finish)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._file.flush()
        self._digest.update(path.read_bytes())

    def append(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if data.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows of shape {data.shape[1:]} for an array of rows {self.shape[1:]}")
        block = data.tobytes()
        self._file.write(block)
        self._digest.update(block)
        self.rows += len(data)

    def finish(self) -> str:
        self._file.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} rows written of {self.shape[0]}")
        return self._digest.hexdigest()

    def abandon(self) -> None:
        self._file.close()


@dataclass
class Entry:
    """One key of the cache folder, for listing and eviction."""

    folder: Path
    about: str
    bytes: int
    used: float  # seconds since the epoch


@dataclass
class Store:
    """Arrays on disk by key (see the module's docstring)."""

    root: Path
    dtype: str = "float32"
    built: int = 0
    reused: int = 0
    checked: set[Path] = field(default_factory=set)  # keys this store wrote or verified: not read again to check

    def line(self) -> str:
        """What this job's store did, in one line for the job's log."""
        held = gigabytes(sum(e.bytes for e in entries(self.root)))
        return (
            f"feature cache: {self.built} parts computed, {self.reused} reused; {self.root} holds {held} "
            "(python -m tlsweep.cache list)"
        )

    def folder(self, fields: dict[str, Any]) -> Path:
        key = hashlib.sha256(json.dumps({**fields, "format": CACHE_FORMAT}, sort_keys=True).encode()).hexdigest()
        return self.root / key[:24]

    def has(self, fields: dict[str, Any]) -> bool:
        return (self.folder(fields) / DONE).is_file()

    def load(self, fields: dict[str, Any], in_memory: bool) -> list[Any] | None:
        """The arrays of ``fields`` (in memory, or as ``DiskArray``), each checked against its checksum;
        None if they were never built or are damaged (a damaged key is removed, to be built again)."""
        folder = self.folder(fields)
        if not (folder / DONE).is_file():
            return None
        try:
            done = json.loads((folder / DONE).read_text())
            count, sums = int(done["arrays"]), done["sha256"]
            if count < 1 or len(sums) != count:
                raise ValueError(f"{DONE} lists {count} arrays and {len(sums)} checksums")
            paths = [folder / f"{i}.npy" for i in range(count)]
            for path, expected in zip(paths, sums, strict=True):
                if folder not in self.checked and _sha256(path) != expected:
                    raise ValueError(f"{path.name} does not match its checksum")
            self.checked.add(folder)
            arrays = [np.load(p) if in_memory else DiskArray(p) for p in paths]
        except (OSError, ValueError, KeyError, TypeError) as e:  # damaged on disk: build it again
            log.warning("feature cache %s is damaged (%s); rebuilding it", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
            self.checked.discard(folder)
            return None
        _touch(folder / USED)
        return arrays

    @contextmanager
    def write(
        self, fields: dict[str, Any], shapes: list[tuple[int, ...]], about: str = "", dtypes: list[str] | None = None
    ) -> Iterator[list[Writer]]:
        """Writers for the arrays of ``fields`` (rows appended in order; of the store's dtype unless
        ``dtypes`` says otherwise); the key appears when all are complete. A full disk is one line
        saying how to make room."""
        folder = self.folder(fields)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_staging()
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        writers: list[Writer] = []
        try:
            staging.mkdir(parents=True)
            types = dtypes or [self.dtype] * len(shapes)
            writers = [Writer(staging / f"{i}.npy", s, t) for i, (s, t) in enumerate(zip(shapes, types, strict=True))]
            yield writers
            sums = [w.finish() for w in writers]
            done = {"arrays": len(writers), "sha256": sums, "fields": fields, "about": about}
            (staging / DONE).write_text(json.dumps(done, default=str))
            for path in staging.iterdir():
                os.chmod(path, FILE_MODE)
        except OSError as e:  # NumPy's own write errors carry no errno: ask the disk
            for w in writers:
                w.abandon()
            shutil.rmtree(staging, ignore_errors=True)
            needed = sum(int(np.prod(s, dtype=np.int64)) for s in shapes) * np.dtype(self.dtype).itemsize
            if is_disk_full(e) or shutil.disk_usage(self.root).free < needed:
                raise TlsweepError(
                    f"the disk is full while writing the feature cache in {self.root} ({needed / 2**30:.1f} GB "
                    "for this part); free some space, set feature_cache.dir to a bigger disk, "
                    "or use feature_cache.dtype=float16 or cache=false"
                ) from e
            raise
        except BaseException:
            for w in writers:
                w.abandon()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            os.replace(staging, folder)
            self.checked.add(folder)  # its checksums were computed from the rows as they were written
        except OSError:  # another process finished the same key first: its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
        _touch(folder / USED)
        self.built += 1

    def get(self, fields: dict[str, Any], build: Any, in_memory: bool = True, about: str = "") -> list[Any]:
        """The arrays of ``fields``: from disk if an earlier job built them, else ``build()`` and saved."""
        arrays = self.load(fields, in_memory)
        if arrays is not None:
            self.reused += 1
            return arrays
        built = [np.asarray(a) for a in build()]
        with self.write(fields, [a.shape for a in built], about) as writers:
            for writer, array in zip(writers, built, strict=True):
                writer.append(array)
        loaded = self.load(fields, in_memory)
        if loaded is None:
            raise OSError(f"the feature cache in {self.root} could not be read back")
        return loaded

    def _clean_staging(self) -> None:
        """Remove the half-built parts of builds whose process is gone (killed mid-write)."""
        for staging in self.root.glob(".*.tmp"):
            pid = staging.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)


def _touch(path: Path) -> None:
    try:
        path.touch(mode=FILE_MODE)
        os.utime(path)
    except OSError:  # a read-only cache still serves
        pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def entries(root: Path) -> list[Entry]:
    """The complete keys under ``root``, least recently used first."""
    found = []
    for done in Path(root).glob(f"*/{DONE}"):
        folder = done.parent
        try:
            about = json.loads(done.read_text()).get("about") or "?"
        except (OSError, ValueError):
            about = "unreadable"
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        used = (folder / USED).stat().st_mtime if (folder / USED).exists() else done.stat().st_mtime
        found.append(Entry(folder, str(about), size, used))
    return sorted(found, key=lambda e: e.used)


def evict(root: Path, limit_bytes: float, keep: set[Path]) -> list[Entry]:
    """Remove the least recently used keys (other than ``keep``) until the folder holds at most
    ``limit_bytes``; returns what was removed."""
    found = entries(root)
    total = sum(e.bytes for e in found)
    removed = []
    for entry in found:
        if total <= limit_bytes:
            break
        if entry.folder in keep:
            continue
        shutil.rmtree(entry.folder, ignore_errors=True)
        total -= entry.bytes
        removed.append(entry)
    return removed


def clear(root: Path) -> list[Entry]:
    """Remove every key and every half-built part of a dead process; returns the keys removed."""
    found = entries(root)
    for entry in found:
        shutil.rmtree(entry.folder, ignore_errors=True)
    Store(Path(root))._clean_staging()
    return found


def describe(entry: Entry) -> str:
    """One line of ``python -m tlsweep.cache list``."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.used))
    return f"{entry.folder.name}  {gigabytes(entry.bytes):>9}  last used {when}  {entry.about}"


def gigabytes(n: float) -> str:
    """A size for people: 0.3 MB, 12 MB, 2.1 GB."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MB"
