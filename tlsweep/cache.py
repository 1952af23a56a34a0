"""The feature cache: a sweep pays for about one pass of the frozen backbone, not one per trial and epoch.

The frozen part of a trial's model computes the same thing in every trial and epoch. So, per job:

- stage 1 trains the head on the backbone's output, computed once;
- stage 2 at unfreeze depth N trains the part above the cut below the top N layers, on the
  tensors that cross that cut (several inside a residual block), computed once per depth;
- random augmentation becomes V fixed views of the training set (V: one per epoch by default);
  epoch e trains on view e mod V, in every trial. Validation is never augmented.

Arrays live under ``outputs/.cache/<key>/``, the key a hash of everything that determines them
(backbone, its weights, image size, preprocessing, the images, the augmentation and its seed,
the cut), so later jobs and sweeps reuse them. They are loaded into memory when small enough and
memory-mapped otherwise. Two processes building the same key both write complete copies under
temporary names and rename them into place, so either result is whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from tlsweep.backbones import Backbone, crossing_tensors, preprocessing_layer
from tlsweep.data import ImageData
from tlsweep.errors import TlsweepError, is_disk_full
from tlsweep.files import process_alive
from tlsweep.model import augmentation
from tlsweep.settings import finetune_epochs

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what is stored changes (2: a checksum per array)
BATCH = 64  # images per forward pass while building


@dataclass
class Store:
    """Arrays on disk by key, shared by every job and sweep that uses the same folder."""

    root: Path
    memory_mb: float = 2048.0
    dtype: str = "float32"
    built: int = 0
    reused: int = 0

    def get(self, fields: dict[str, Any], build: Any) -> list[np.ndarray]:
        """The arrays for ``fields``: from disk if an earlier job built them, else ``build()`` and saved."""
        key = hashlib.sha256(json.dumps({**fields, "format": CACHE_FORMAT}, sort_keys=True).encode()).hexdigest()
        folder = self.root / key[:24]
        if (folder / "done.json").is_file():
            try:
                arrays = self._load(folder)
                self.reused += 1
                return arrays
            except (OSError, ValueError, KeyError, TypeError) as e:  # damaged on disk: build it again
                log.warning("feature cache %s is damaged (%s); rebuilding it", folder, e)
                shutil.rmtree(folder, ignore_errors=True)
        self._save(folder, [np.asarray(a, dtype=self.dtype) for a in build()], fields)
        self.built += 1
        return self._load(folder)

    def _save(self, folder: Path, arrays: list[np.ndarray], fields: dict[str, Any]) -> None:
        self._clean_staging()
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            sums = []
            for i, array in enumerate(arrays):
                np.save(staging / f"{i}.npy", array)
                sums.append(_sha256(staging / f"{i}.npy"))
            done = {"arrays": len(arrays), "sha256": sums, "fields": fields}
            (staging / "done.json").write_text(json.dumps(done, default=str))
        except OSError as e:  # NumPy's own write errors carry no errno: ask the disk
            shutil.rmtree(staging, ignore_errors=True)
            needed = sum(a.nbytes for a in arrays)
            if is_disk_full(e) or shutil.disk_usage(self.root).free < needed:
                raise TlsweepError(
                    f"the disk is full while writing the feature cache in {self.root} ({needed / 2**30:.1f} GB "
                    "for this part); free some space, set feature_cache.dir to a bigger disk, "
                    "or use feature_cache.dtype=float16 or cache=false"
                ) from e
            raise
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same key first: its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)

    def _clean_staging(self) -> None:
        """Remove the half-built parts of builds whose process is gone (killed mid-write)."""
        for staging in self.root.glob(".*.tmp"):
            pid = staging.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)

    def _load(self, folder: Path) -> list[np.ndarray]:
        """The arrays in ``folder``, each checked against the checksum written with it."""
        done = json.loads((folder / "done.json").read_text())
        count, sums = int(done["arrays"]), done["sha256"]
        paths = [folder / f"{i}.npy" for i in range(count)]
        if count < 1 or len(sums) != count:
            raise ValueError(f"done.json lists {count} arrays and {len(sums)} checksums")
        for path, expected in zip(paths, sums, strict=True):
            if _sha256(path) != expected:
                raise ValueError(f"{path.name} does not match its checksum")
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        mode = None if size_mb <= self.memory_mb else "r"  # memory-map what does not fit
        return [np.load(p, mmap_mode=mode) for p in paths]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FeatureCache:
    """The cached tensors of one job: every cut the search names is made before it starts (``prepare``),
    any other when first asked for."""

    backbone: Backbone
    data: ImageData
    augmentation: DictConfig | None
    views: int
    seed: int
    store: Store
    depths: list[int] = field(default_factory=lambda: [0])  # every cut the search may ask for
    _fingerprint: dict[str, Any] = field(default_factory=dict)
    _memo: dict[tuple, list[np.ndarray]] = field(default_factory=dict)
    _parts: dict[tuple, tuple[Any, list[int | None]]] = field(default_factory=dict)
    _network: Any = None  # one network for every part: the cache never trains it

    def prepare(self, network: Any = None) -> None:
        """Compute (or load) every cut the search may ask for, before any trial trains.

        ``network`` is the backbone to run, pretrained and untouched: the job's classifier's, so
        no second copy is built. It is let go afterwards, as trials train it; a cut asked for
        later gets a network of its own.
        """
        self._network = network
        try:
            for split, views in (("train", range(self.views)), ("val", range(1))):
                for view in views:
                    self._arrays(max(self.depths), split, view)  # every cut of this split and view
        finally:
            self._network, self._parts = None, {}

    def train_views(self, depth: int) -> list[list[np.ndarray]]:
        """For each view, the tensors at the cut for ``depth`` of every training image."""
        return [self._arrays(depth, "train", v) for v in range(self.views)]

    def val(self, depth: int) -> list[np.ndarray]:
        """The tensors at the cut for ``depth`` of every validation image (never augmented)."""
        return self._arrays(depth, "val", 0)

    def view_images(self, view: int) -> np.ndarray:
        """Training images as view ``view`` augments them (the images themselves without augmentation)."""
        x = self.data.x_train
        augment = augmentation(self.augmentation, self.seed + 7919 * view) if self.augmentation else None
        if augment is None:
            return x.astype(np.float32)
        out = [np.asarray(augment(x[i : i + BATCH].astype(np.float32), training=True)) for i in range(0, len(x), BATCH)]
        return np.concatenate(out)

    def _arrays(self, depth: int, split: str, view: int) -> list[np.ndarray]:
        """The tensors at one cut. All cuts of a split and view are made together, deepest first, each
        from the one below it: about one pass of the backbone in all, not one per cut."""
        if (depth, split, view) not in self._memo:
            below: tuple[int, list[np.ndarray]] | None = None
            for d in sorted({*self.depths, depth}, reverse=True):
                if (d, split, view) not in self._memo:
                    fields = {**self.fingerprint(), "depth": d, "split": split, "view": view, "views": self.views}
                    build = lambda d=d, below=below: self.compute(d, split, view, below)  # noqa: E731
                    self._memo[(d, split, view)] = self.store.get(fields, build)
                below = (d, self._memo[(d, split, view)])
        return self._memo[(depth, split, view)]

    def compute(
        self, depth: int, split: str, view: int, below: tuple[int, list[np.ndarray]] | None
    ) -> list[np.ndarray]:

        below_depth = None if below is None else below[0]
        if (below_depth, depth) not in self._parts:  # one model per pair of cuts: traced once, for every view
            self._parts[(below_depth, depth)] = self._part(below_depth, depth)
        part, passed = self._parts[(below_depth, depth)]
        if below is None:  # from the images
            source = [self.view_images(view) if split == "train" else self.data.x_val.astype(np.float32)]
        else:  # from the tensors at a deeper cut: only the layers in between run
            source = below[1]
        where = f"view {view + 1}/{self.views}" if split == "train" and self.views > 1 else split
        log.info("feature cache: computing the cut at depth %d for %d images (%s) …", depth, len(source[0]), where)
        started = time.monotonic()
        computed: list[np.ndarray] = []
        if part is not None:  # batch by batch: the source may be memory-mapped
            batches = [
                part(*(np.asarray(a[i : i + BATCH], np.float32) for a in source))
                for i in range(0, len(source[0]), BATCH)
            ]
            computed = [np.concatenate([np.asarray(b[k]) for b in batches]) for k in range(len(batches[0]))]
        log.info("feature cache: done in %.1fs", time.monotonic() - started)
        if below is None and depth >= self.backbone.cuts:  # the cut below every layer: preprocessed images
            return [np.asarray(preprocessing_layer(self.backbone.preprocessing)(source[0]))]
        it = iter(computed)
        return [np.asarray(source[j]) if j is not None else next(it) for j in passed]

    def _part(self, below_depth: int | None, depth: int) -> tuple[Any, list[int | None]]:
        """The layers from one cut (or the images) to another, as a function traced once for any batch
        size, and which wanted tensors cross both cuts (so are passed on, not computed)."""
        import keras
        import tensorflow as tf

        if self._network is None:
            self._network = self.backbone.build()
        net = self._network
        wanted = crossing_tensors(net, depth)
        given = [net.input] if below_depth is None else crossing_tensors(net, below_depth)
        passed = [next((j for j, g in enumerate(given) if g is t), None) for t in wanted]
        to_compute = [t for t, j in zip(wanted, passed, strict=True) if j is None]
        if not to_compute:
            return None, passed
        inputs = [keras.Input(g.shape[1:]) for g in given]
        middle = keras.Model(given, to_compute)
        if below_depth is None:
            outputs = middle(preprocessing_layer(self.backbone.preprocessing)(inputs[0]), training=False)
        else:
            outputs = middle(inputs, training=False)
        model = keras.Model(inputs, outputs)
        specs = [tf.TensorSpec((None, *g.shape[1:]), tf.float32) for g in given]

        def forward(*xs: Any) -> list[Any]:
            return keras.tree.flatten(model(xs[0] if len(xs) == 1 else list(xs), training=False))

        return tf.function(forward, input_signature=specs), passed

    def fingerprint(self) -> dict[str, Any]:
        """What the cached tensors depend on, besides the cut and the view."""
        if not self._fingerprint:
            weights = hashlib.sha256()
            for array in self.backbone.weights:
                weights.update(np.ascontiguousarray(array).tobytes())
            images = hashlib.sha256()
            for array in (self.data.x_train, self.data.y_train, self.data.x_val, self.data.y_val):
                images.update(np.ascontiguousarray(array).tobytes())
            augmentation = OmegaConf.to_container(self.augmentation) if self.augmentation else None
            self._fingerprint = {
                "backbone": self.backbone.name,
                "weights": weights.hexdigest(),
                "image_size": self.backbone.image_size,
                "preprocessing": self.backbone.preprocessing,
                "images": images.hexdigest(),
                "augmentation": augmentation,
                "seed": self.seed,
                "dtype": self.store.dtype,
            }
        return self._fingerprint


def views_for(cfg: DictConfig) -> int:
    """How many augmented views: ``feature_cache.views``, or one per epoch; one without augmentation."""
    if not _augments(cfg.augmentation):
        return 1
    if cfg.feature_cache.views:
        return int(cfg.feature_cache.views)
    return int(cfg.finetune.head_epochs) + finetune_epochs(cfg.finetune)


def _augments(cfg: DictConfig) -> bool:
    return augmentation(cfg, 0) is not None


def make_cache(cfg: DictConfig, backbone: Backbone, data: ImageData) -> FeatureCache:
    """The job's feature cache, as ``cfg.feature_cache`` sets it up."""
    settings = cfg.feature_cache
    store = Store(Path(settings.dir), float(settings.memory_mb), str(settings.dtype))
    augmentation = cfg.augmentation if _augments(cfg.augmentation) else None
    mode = cfg.finetune.mode
    depths = [0] + ([int(d) for d in cfg.search.unfreeze_depths] if mode == "top" else [])
    depths += [backbone.num_layers] if mode == "full" else []
    cuts = sorted({backbone.cut_depth(d) for d in depths})
    return FeatureCache(backbone, data, augmentation, views_for(cfg), int(cfg.seed), store, cuts)
