"""The feature cache's plan: what to cache and where, decided before anything is computed.

Caching a cut through the backbone skips the layers below it in every epoch that trains on it,
and costs its tensors' bytes, held in memory or read from disk. The plan weighs both for each cut
under one memory budget for the whole job and the room on disk, so a job never outgrows the
machine: a cut that does not pay, or does not fit, trains from the images the plain way.

This module is arithmetic only (no TensorFlow): its decisions are unit-tested on made-up sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tlsweep.cache.store import gigabytes
from tlsweep.errors import TlsweepError

GB = 2**30
TRAINING_RESERVE = GB  # what training needs beside the arrays (activations, optimizer state, TensorFlow's own)
PIPELINE_COPIES = 2  # arrays held in memory are also copied once into the input pipeline (and, while
# copying, the biggest of them takes its size once more)


@dataclass(frozen=True)
class Cut:
    """One cut through the backbone, as the plan sees it."""

    cut: int  # network layers above it (0: the backbone's pooled output, what the head trains on)
    depths: tuple[int, ...]  # the unfreeze depths that train above it
    row_bytes: int  # float32 bytes of one image's tensors at the cut
    below: float  # the share of the backbone's compute below the cut: what caching skips
    views: tuple[int, ...]  # the augmented training views that epochs read at this cut
    epochs: float  # epochs expected to train on it over the whole search (trials × epochs)


@dataclass(frozen=True)
class Decision:
    cut: Cut
    where: str  # "memory", "disk" (read in batches) or "images" (not cached: trains the plain way)
    bytes: int  # what its arrays take, on disk and (for "memory") in memory, at the cache's dtype
    why: str = ""


@dataclass
class CachePlan:
    decisions: list[Decision]
    views: int
    memory_bytes: float  # what the arrays could take in memory
    disk_bytes: float  # what they could take on disk
    budget: float = 0.0  # the job's whole memory budget, of which memory_bytes is the arrays' share
    kept: float = 0.0  # of the budget, what the weights of runs that may still win take (``runs.Runner.kept``)

    def where(self, cut: int) -> str:
        return next((d.where for d in self.decisions if d.cut.cut == cut), "memory")

    def views_at(self, cut: int) -> tuple[int, ...] | None:
        return next((d.cut.views for d in self.decisions if d.cut.cut == cut), None)

    def disk_needed(self) -> int:
        return sum(d.bytes for d in self.decisions if d.where != "images")

    def line(self) -> str:
        """What was decided and why, in one line."""
        cached = [d for d in self.decisions if d.where != "images"]
        memory = sum(d.bytes for d in cached if d.where == "memory")
        disk = sum(d.bytes for d in cached if d.where == "disk")
        line = (
            f"feature cache: {len(cached)} cut(s), {self.views} view(s) → {gigabytes(memory)} in memory, "
            f"{gigabytes(disk)} read from disk"
        )
        line += (
            f" (memory budget {gigabytes(self.budget)} for the job, {gigabytes(self.memory_bytes)} of it for the "
            f"cache; {gigabytes(self.disk_bytes)} on disk)"
        )
        if self.kept:
            line = line[:-1] + f"; {gigabytes(self.kept)} kept for the weights of runs that may still win)"
        skipped = [d for d in self.decisions if d.where == "images"]
        if skipped:
            line += "; " + "; ".join(f"depth {_depths(d.cut)} trains from images: {d.why}" for d in skipped)
        return line


def _depths(cut: Cut) -> str:
    return "/".join(str(d) for d in cut.depths) or str(cut.cut)


def array_bytes(cut: Cut, train: int, val: int, itemsize: int) -> int:
    """The bytes of a cut's arrays: its training views and the validation images."""
    return cut.row_bytes * itemsize // 4 * (train * len(cut.views) + val)


def make_plan(
    cuts: list[Cut], train: int, val: int, views: int, itemsize: int, memory_bytes: float, disk_bytes: float
) -> CachePlan:
    """Place each cut: in memory while the budget lasts, then on disk, else not cached.

    A cut pays when the epochs trained on it skip more backbone passes than its views cost to
    make, beyond those made anyway for the head's cut (the head trains every trial on cut 0, so
    that one always pays). Cuts are placed by what they save per byte.
    """
    head = next((c for c in cuts if c.cut == 0), None)
    shared = set(head.views) if head else set()
    sized = [(c, array_bytes(c, train, val, itemsize)) for c in cuts]
    worth = sorted(sized, key=lambda cb: -(cb[0].epochs * cb[0].below) / max(cb[1], 1))
    memory_left, disk_left = memory_bytes, disk_bytes
    largest = 0  # the biggest cut in memory: copying it into the pipeline briefly takes its size once more
    decisions = []
    for cut, size in worth:
        passes = len(set(cut.views) - shared) if cut.cut else len(cut.views)
        if cut.below <= 0:
            decisions.append(Decision(cut, "images", size, "nothing below its cut to skip"))
        elif cut.cut and cut.epochs < passes:
            why = f"{cut.epochs:g} epochs would train on it, fewer than the {passes} views it would take to make"
            decisions.append(Decision(cut, "images", size, why))
        elif size > disk_left:
            decisions.append(Decision(cut, "images", size, f"caching it would need {gigabytes(size)} on disk"))
        elif size * PIPELINE_COPIES + max(largest, size) <= memory_left + largest:
            memory_left -= size * PIPELINE_COPIES + max(size - largest, 0)
            largest = max(largest, size)
            disk_left -= size
            decisions.append(Decision(cut, "memory", size))
        else:
            disk_left -= size
            decisions.append(Decision(cut, "disk", size))
    decisions.sort(key=lambda d: -d.cut.cut)
    return CachePlan(decisions, views, memory_bytes, disk_bytes)


def check_head_fits(plan: CachePlan, folder: Path, free: float, limit_gb: float) -> None:
    """The head's features must be cached (every trial trains on them): if they cannot be, say so before
    any work, with the ways out."""
    head = next((d for d in plan.decisions if d.cut.cut == 0), None)
    if head is None or head.where != "images" or head.cut.below <= 0:
        return
    raise TlsweepError(
        f"the feature cache needs {gigabytes(head.bytes)} on disk for the head's features alone, and "
        f"{gigabytes(plan.disk_bytes)} is available in {folder} ({gigabytes(free)} free, "
        f"feature_cache.max_disk_gb={limit_gb:g}); free some space or raise feature_cache.max_disk_gb, "
        "or use feature_cache.views=1, feature_cache.dtype=float16, a smaller dataset.image_size, or cache=false"
    )


def available_memory() -> int:
    """Bytes this process could still take: the kernel's MemAvailable, within a container's limit."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # cgroup v2: a container's own limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def resident_memory() -> int:
    """Bytes this process holds in memory now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def images_room(budget: float) -> float:
    """What the job's decoded images may take of its memory ``budget``: half of what it does not hold yet (the
    images, and their copy in the input pipeline)."""
    return (budget - resident_memory()) / 2


def memory_budget(memory_gb: float | None, jobs_at_once: int) -> float:
    """The job's budget for everything it holds: ``feature_cache.memory_gb``, or half of what is
    available now, shared by the jobs running at once, plus what the job already holds."""
    if memory_gb:
        return float(memory_gb) * GB
    return available_memory() / 2 / max(jobs_at_once, 1) + resident_memory()
