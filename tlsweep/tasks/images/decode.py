"""Images: decoded once, upright, resized to the backbone's size, as uint8 RGB; many at a time in parallel.

Decoding is the same for training, testing and ``predict``, so a model sees the images it was
trained on. Unreadable or oversized images are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tlsweep.cache.store import Store
from tlsweep.errors import TlsweepError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_PIXELS = 50_000_000  # images larger than this (about 7,000 × 7,000) are skipped: decoded, one takes 150 MB


def decode_all(
    files: dict[str, list[Path]], image_size: int, workers: int, store: Store | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of ``files`` decoded, with its class index; the unreadable ones skipped and named.

    With a ``store``, the decoded images are kept there under a key of the files' paths, sizes and
    modification times and the image size: the next job at this size loads them instead.
    """
    paths = [p for ps in files.values() for p in ps]
    labels = np.array([i for i, ps in enumerate(files.values()) for _ in ps], dtype=np.int32)
    fields = {"kind": "decoded images", "size": image_size, "decoder": DECODER, "files": _files_key(paths)}
    stored = store.load(fields, in_memory=True) if store is not None else None
    if stored is not None:
        store.reused += 1
        x, ok = stored[0], stored[1].astype(bool)
        log.info("%d images at %d px decoded by an earlier job (%s)", len(paths), image_size, store.root)
    else:
        x, good_rows = _decode(paths, image_size, workers)
        ok = good_rows.astype(bool)
        if store is not None:
            about = f"{len(paths)} decoded images at {image_size} px from {paths[0].parent.parent}"
            with store.write(fields, [x.shape, ok.shape], about, ["uint8", "uint8"]) as (images, good):
                images.append(x)
                good.append(good_rows)
    skipped = [str(p) for p, good in zip(paths, ok, strict=True) if not good]
    for label, name in enumerate(files):
        if not ok[labels == label].any():
            raise TlsweepError(f"no image of class '{name}' could be read; check the files in its folder")
    return (x if ok.all() else x[ok]), labels[ok], skipped


DECODER = 1  # bump when decode_image's output changes: decoded images stored earlier are then decoded again
PROCESSES_FROM = 2000  # images: fewer decode in threads, as starting processes would cost more than it saves


def _files_key(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _decode(paths: list[Path], image_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The images decoded into one uint8 array (unreadable ones left black), and which were read.

    Decoding is CPU work in Python: large sets decode in one process per core (threads share one
    interpreter and barely scale), small ones in threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = cores > 1 and len(paths) >= PROCESSES_FROM
    how = f"{cores} processes" if processes else f"{max(1, workers)} threads"
    log.info("decoding %d images at %d px in %s …", len(paths), image_size, how)
    started = time.monotonic()
    x = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
    ok = np.zeros(len(paths), np.uint8)
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    if processes:
        context = multiprocessing.get_context("spawn")  # TensorFlow's threads make fork unsafe
        pool: Any = ProcessPoolExecutor(cores, mp_context=context)
    else:
        pool = ThreadPoolExecutor(max(1, workers))
    with pool:
        row = 0
        for images, good in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)):
            x[row : row + len(images)], ok[row : row + len(images)] = images, good
            row += len(images)
    seconds = time.monotonic() - started
    log.info("decoded in %.1fs (%.0f images/s)", seconds, len(paths) / max(seconds, 1e-9))
    return x, ok


def _decode_chunk(paths: list[Path], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    decoded = [decode_image(p, image_size) for p in paths]
    blank = np.zeros((image_size, image_size, 3), np.uint8)
    images = np.stack([blank if im is None else im for im in decoded])
    return images, np.array([im is not None for im in decoded], np.uint8)


def decode_image(path: Path, image_size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """Decode one image to RGB uint8 at ``image_size``, upright as viewers show it (EXIF orientation);
    None if it cannot be read or has more than ``max_pixels`` pixels (it would take gigabytes decoded)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:  # read from the header: nothing decoded yet
                return None
            im.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced size, much faster
            im = ImageOps.exif_transpose(im)  # a phone photo stored sideways, turned as it was taken
            if im.mode.startswith("I"):  # 16/32-bit integer images: scale to 8 bits, don't clip
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8))
            return resize(im, image_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def resize(im: Image.Image, image_size: int) -> np.ndarray:
    rgb = im.convert("RGB")  # grayscale, palette, RGBA and CMYK all become RGB
    return np.asarray(rgb.resize((image_size, image_size), Image.BILINEAR), dtype=np.uint8)
