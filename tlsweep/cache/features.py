"""The feature cache: a sweep pays for about one pass of the frozen backbone, not one per trial and epoch.

The frozen part of a trial's model computes the same thing in every trial and epoch. So, per job:

- stage 1 trains the head on the backbone's pooled output, computed once;
- stage 2 at unfreeze depth N trains the part above the cut below the top N layers, on the
  tensors that cross that cut (several inside a residual block), computed once per depth;
- random augmentation becomes V fixed views of the training set (V: ``JobSpec.views``); epoch e
  trains on view e mod V, in every trial. Each cut keeps only the
  views its epochs read (stage 2's cuts: the views of stage 2's epochs). Validation is never augmented.

The cache is the same for every task: it runs the backbone's preprocessing (pixels rescaled, text
tokenized) and network on the examples, which for texts are strings until the preprocessing.

A plan (``tlsweep.cache.plan``) decides first which cuts pay and where they go under the job's
memory budget: in memory, read from disk batch by batch, or not cached (trained from the images).
Every cut of a view is made in one pass, batch by batch, each from the one below it, and streamed
to disk: building holds one batch, whatever the dataset's size. Arrays are stored by a key hashing
everything that determines them (backbone, weights, image size, preprocessing, images,
augmentation and seed, cut, view), so later jobs and sweeps reuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlsweep import interrupt
from tlsweep.backbone import Backbone, backbone_layers, crossing_tensors
from tlsweep.cache.plan import GB, TRAINING_RESERVE, CachePlan, Cut, check_head_fits, make_plan, resident_memory
from tlsweep.cache.store import Store, entries, evict, gigabytes
from tlsweep.data import Data
from tlsweep.groups import AugmentationSpec
from tlsweep.model import weights_bytes
from tlsweep.progress import Progress
from tlsweep.spec import JobSpec
from tlsweep.tasks import Task

log = logging.getLogger(__name__)

BATCH = 64  # images per forward pass while building

Arrays = list[Any]  # one array per tensor at a cut (numpy in memory, or a DiskArray)


@dataclass
class FeatureCache:
    """The cached tensors of one job: every cut the plan keeps is made before the search starts
    (``prepare``), any other when first asked for."""

    backbone: Backbone
    data: Data
    augmentation: AugmentationSpec | None
    views: int
    seed: int
    store: Store
    task: Task | None = None  # the task's augmentation makes the views (None: no augmentation)
    depths: list[int] = field(default_factory=lambda: [0])  # every cut the search may ask for
    plan: CachePlan | None = None  # None: every cut cached in memory, with every view
    _fingerprint: dict[str, Any] = field(default_factory=dict)
    _memo: dict[tuple, Arrays] = field(default_factory=dict)
    _parts: dict[tuple, Callable[[Arrays], Arrays]] = field(default_factory=dict)
    _network: Any = None  # one network for every part: the cache never trains it

    def cached(self, cut: int) -> bool:
        """Whether trials above ``cut`` train on cached tensors (else on the images, the plain way)."""
        return self.plan is None or self.plan.where(cut) != "images"

    def views_at(self, cut: int) -> tuple[int, ...]:
        """The training views kept at ``cut``: those its epochs read."""
        planned = self.plan.views_at(cut) if self.plan else None
        return planned if planned is not None else tuple(range(self.views))

    def prepare(self, network: Any = None) -> None:
        """Compute (or load) every cut the plan keeps, before any trial trains.

        ``network`` is the backbone to run, pretrained and untouched: the job's classifier's, so
        no second copy is built. It is let go afterwards, as trials train it; a cut asked for
        later gets a network of its own.
        """
        self._network = network
        try:
            parts = self.parts()
            for view in range(self.views):
                self._make([c for c, split, v in parts if split == "train" and v == view], "train", view)
            self._make([c for c, split, _ in parts if split == "val"], "val", 0)
        finally:
            self._network, self._parts = None, {}

    def train_views(self, cut: int) -> list[Arrays | None]:
        """For each view, the tensors at ``cut`` of every training image (None for views no epoch reads there)."""
        kept = self.views_at(cut)
        return [self._arrays(cut, "train", v) if v in kept else None for v in range(self.views)]

    def val(self, cut: int) -> Arrays:
        """The tensors at ``cut`` of every validation image (never augmented)."""
        return self._arrays(cut, "val", 0)

    def view_images(self, view: int) -> np.ndarray:
        """Training images as view ``view`` augments them, all at once (for comparisons in tests)."""
        return np.concatenate(list(self._images("train", view)))

    def compute(self, cut: int, split: str, view: int) -> Arrays:
        """The tensors at ``cut`` computed from the images in memory, nothing stored (for comparisons and the
        benchmark's floor)."""
        batches = [out[0] for out in self._run([cut], None, split, view)]
        return [np.concatenate([b[k] for b in batches]) for k in range(len(batches[0]))]

    def parts(self) -> list[tuple[int, str, int]]:
        """The (cut, split, view) of every part the plan keeps."""
        kept = [c for c in self.depths if self.cached(c)]
        train = [(c, "train", v) for v in range(self.views) for c in kept if v in self.views_at(c)]
        return train + [(c, "val", 0) for c in kept]

    def folders(self) -> set[Path]:
        """The store's folders of every part the plan keeps."""
        return {self.store.folder(self._fields(*part)) for part in self.parts()}

    def _arrays(self, cut: int, split: str, view: int) -> Arrays:
        if (cut, split, view) not in self._memo:
            self._make([cut], split, view)
        return self._memo[(cut, split, view)]

    def _fields(self, cut: int, split: str, view: int) -> dict[str, Any]:
        return {**self.fingerprint(), "depth": cut, "split": split, "view": view, "views": self.views}

    def _make(self, cuts: list[int], split: str, view: int) -> None:
        """Load the tensors at ``cuts`` for one split and view, building the missing ones in one pass: from
        the nearest cut already stored below them, or from the images. A stored part found damaged when it
        is loaded (its checksum) is removed by the store, and built again here."""
        cuts = sorted(set(cuts), reverse=True)  # nearest the images first
        built: set[int] = set()
        for _ in range(2):  # a damaged part is built again once; damaged again means the disk is failing
            missing = [c for c in cuts if not self.store.has(self._fields(c, split, view))]
            if missing:
                self._build(missing, split, view)
                built.update(missing)
            loaded = {c: self.store.load(self._fields(c, split, view), in_memory=self._in_memory(c)) for c in cuts}
            damaged = [c for c, arrays in loaded.items() if arrays is None]
            if not damaged:
                break
            log.warning("feature cache: %d damaged part(s) in %s removed; building them again", len(damaged),
                        self.store.root)  # fmt: skip
        else:
            raise OSError(f"the feature cache in {self.store.root} could not be read back after it was rebuilt")
        for c, arrays in loaded.items():
            self.store.reused += c not in built
            self._memo[(c, split, view)] = arrays

    def _build(self, missing: list[int], split: str, view: int) -> None:
        """Compute and store the tensors at ``missing`` cuts (nearest the images first) in one pass."""
        stored = [c for c in self.depths if c > missing[0] and self.store.has(self._fields(c, split, view))]
        start = min(stored, default=None)
        source = self.store.load(self._fields(start, split, view), in_memory=False) if start is not None else None
        if source is None:
            start = None
        n = len(self.data.y_train if split == "train" else self.data.y_val)
        where = f"view {view + 1}/{self.views}" if split == "train" and self.views > 1 else split
        started = time.monotonic()
        with ExitStack() as stack:
            writers = []
            for c in missing:
                fields, about = self._fields(c, split, view), self._about(c, split, view)
                dtypes = cut_dtypes(self._net(), c, self.backbone.cuts, self.store.dtype)
                writers.append(stack.enter_context(self.store.write(fields, self._shapes(c, n), about, dtypes)))
            progress = Progress(f"feature cache: {where}", n, unit=self.data.kind)
            stack.callback(progress.close)
            for outputs in self._run(missing, source, split, view, start):
                for cut_writers, arrays in zip(writers, outputs, strict=True):
                    for writer, array in zip(cut_writers, arrays, strict=True):
                        writer.append(array)
                progress.advance(len(outputs[0][0]))
        cuts = ", ".join(str(self.backbone.unit_depth(c)) for c in missing)
        log.info("feature cache: %s, %s at depth %s: %d %s in %.1fs", where, "cut" if len(missing) == 1 else "cuts",
                 cuts, n, self.data.kind, time.monotonic() - started)  # fmt: skip

    def _in_memory(self, cut: int) -> bool:
        return self.plan is None or self.plan.where(cut) != "disk"

    def _about(self, cut: int, split: str, view: int) -> str:
        where = f"view {view + 1}/{self.views}" if split == "train" else split
        return f"{self.backbone.name}, cut at depth {cut}, {where}"

    def _shapes(self, cut: int, n: int) -> list[tuple[int, ...]]:
        return [(n, *shape) for shape in cut_shapes(self._net(), cut, self.backbone.cuts)]

    def _images(self, split: str, view: int) -> Iterator[np.ndarray]:
        """The examples of one split and view in batches (images as float32), augmented by the view's own draws."""
        x = self.data.x_train if split == "train" else self.data.x_val
        augment = None
        if split == "train" and self.augmentation and self.task is not None:
            import tensorflow as tf

            layers = self.task.augmentation(self.augmentation, self.seed + 7919 * view)
            # traced once per view: the same draws as eager calls, without Python's overhead per layer and batch
            augment = tf.function(
                lambda images: layers(images, training=True),
                input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32)],
            )
        for i in range(0, len(x), BATCH):
            batch = _batch(x[i : i + BATCH])
            yield np.asarray(augment(batch)) if augment is not None else batch

    def _run(
        self, cuts: list[int], source: Arrays | None, split: str, view: int, start: int | None = None
    ) -> Iterator[list[Arrays]]:
        """For each batch, the tensors at each of ``cuts`` (nearest the images first), each cut computed
        from the one before it; the first from ``source`` (the stored tensors at cut ``start``) or the images."""
        if source is None:
            batches: Iterator[Arrays] = ([b] for b in self._images(split, view))
        else:
            count = len(source[0])
            batches = ([np.asarray(a[i : i + BATCH], np.float32) for a in source] for i in range(0, count, BATCH))
        for batch in batches:
            interrupt.check()  # a Ctrl-C that library code swallowed stops the build here
            below, outputs = (None if source is None else start), []
            for cut in cuts:
                batch = self._step(below, cut)(batch)
                outputs.append(batch)
                below = cut
            yield outputs

    def _net(self) -> Any:
        if self._network is None:
            self._network = self.backbone.build()
        return self._network

    def _step(self, below: int | None, cut: int) -> Callable[[Arrays], Arrays]:
        """The layers from one cut (or the images) to another, as a function on a batch, traced once for
        any batch size; tensors that cross both cuts are passed on, not computed."""
        if (below, cut) in self._parts:
            return self._parts[(below, cut)]
        import keras
        import tensorflow as tf

        net, raw = self._net(), self.backbone.inputs
        wanted = crossing_tensors(net, cut)  # below every layer: the network's own inputs
        if below is None:  # from the examples: through the preprocessing, every tensor computed (or its input)
            inputs, given, passed = [keras.Input(raw.shape, dtype=raw.dtype)], net.input, [None] * len(wanted)
        else:
            given = crossing_tensors(net, below)
            inputs, passed = [keras.Input(g.shape[1:]) for g in given], [
                next((j for j, g in enumerate(given) if g is t), None) for t in wanted
            ]
        to_compute = [t for t, j in zip(wanted, passed, strict=True) if j is None]
        model = None
        if to_compute:
            middle = keras.Model(given, to_compute)
            x = self.backbone.preprocess()(inputs[0]) if below is None else inputs
            outputs = keras.tree.flatten(middle(x, training=False))
            if cut == 0 and len(outputs[0].shape) == 4:  # the head's input: pooled, as its first layer does
                outputs = [keras.ops.mean(outputs[0], axis=(1, 2))]
            model = keras.Model(inputs, outputs)
        function = None
        if model is not None:
            specs = [tf.TensorSpec((None, *i.shape[1:]), i.dtype) for i in inputs]

            def forward(*xs: Any) -> list[Any]:
                return keras.tree.flatten(model(xs[0] if len(xs) == 1 else list(xs), training=False))

            function = tf.function(forward, input_signature=specs)

        def step(xs: Arrays) -> Arrays:
            computed = iter([np.asarray(t) for t in function(*xs)] if function is not None else [])
            return [np.asarray(xs[j]) if j is not None else next(computed) for j in passed]

        self._parts[(below, cut)] = step
        return step

    def fingerprint(self) -> dict[str, Any]:
        """What the cached tensors depend on, besides the cut and the view."""
        if not self._fingerprint:
            weights = hashlib.sha256()
            for array in self.backbone.weights:
                weights.update(np.ascontiguousarray(array).tobytes())
            images = hashlib.sha256()
            for array in (self.data.x_train, self.data.y_train, self.data.x_val, self.data.y_val):
                for i in range(0, len(array), 1024):  # in blocks: the images may be read from disk
                    images.update(_bytes(array[i : i + 1024]))
            augmentation = None
            if self.augmentation and self.task is not None:  # the settings, and how they apply (other views differ)
                augmentation = {**dataclasses.asdict(self.augmentation), "warp": self.task.augmentation_version()}
            self._fingerprint = {
                "backbone": self.backbone.name,
                "weights": weights.hexdigest(),
                **self.backbone.about,
                "images": images.hexdigest(),
                "augmentation": augmentation,
                "seed": self.seed,
                "dtype": self.store.dtype,
            }
        return self._fingerprint


def _batch(examples: Any) -> np.ndarray:
    """A batch of examples as the network's first layer takes them: images as float32, texts as strings."""
    examples = np.asarray(examples)
    return examples if examples.dtype.kind in "OUS" else examples.astype(np.float32)


def _bytes(examples: Any) -> bytes:
    """The examples' contents, to hash (texts by their characters, not by where Python keeps them)."""
    examples = np.asarray(examples)
    if examples.dtype.kind in "OUS":
        return "\0".join(str(x) for x in examples.ravel()).encode("utf-8", "surrogatepass")
    return np.ascontiguousarray(examples).tobytes()


def cut_shapes(network: Any, cut: int, cuts: int) -> list[tuple[int, ...]]:
    """The shapes (without the batch) of the tensors stored at ``cut``: the pooled features at 0, the network's
    inputs below every layer."""
    shapes = [tuple(t.shape[1:]) for t in crossing_tensors(network, min(cut, cuts))]
    return [shapes[0][-1:]] if cut == 0 and len(shapes[0]) == 3 else shapes


def cut_dtypes(network: Any, cut: int, cuts: int, stored: str) -> list[str]:
    """How the tensors at ``cut`` are stored: features in the cache's dtype (``feature_cache.dtype``), whole
    numbers as they are (a text encoder's token ids and masks: float16 would round an id above 2048)."""
    tensors = crossing_tensors(network, min(cut, cuts))
    return [stored if "float" in str(t.dtype) else str(t.dtype) for t in tensors]


def keras_tree_first(output: Any) -> Any:
    """A layer's first output (a layer may return several: an embedding and its mask)."""
    import keras

    return keras.tree.flatten(output)[0]


def compute_below(network: Any, cut: int) -> float:
    """The share of the backbone's compute in its layers below ``cut``, estimated per layer as its
    weights times the positions of its output (a convolution's multiply-adds: pixels, or tokens)."""
    layers = backbone_layers(network)
    costs = []
    for layer in layers:
        shape = keras_tree_first(layer.output).shape
        positions = math.prod(int(d or 1) for d in shape[1:-1])  # (batch, [height, width | tokens], channels)
        costs.append(layer.count_params() * positions)
    total = sum(costs) or 1
    return sum(costs[: len(layers) - cut]) / total


def plan_cuts(spec: JobSpec, backbone: Backbone, network: Any) -> list[Cut]:
    """Each cut the job may train on: its bytes per image, the compute below it, the views its epochs read
    and how many epochs are expected to train on it (search, finalists and refit: ``JobSpec.workload``)."""
    work, views = spec.workload(), spec.views
    searched = list(spec.depths(backbone.num_layers)) or [0]
    by_cut: dict[int, list[int]] = {}
    for depth in spec.cache_depths(backbone.num_layers):
        by_cut.setdefault(backbone.cut_depth(depth), []).append(depth)
    cuts = []
    for cut, served in sorted(by_cut.items()):
        share = sum(searched.count(d) for d in served) / len(searched)
        epochs = work.finetune_epochs * share + (work.head_epochs if cut == 0 else 0)
        read = (work.head_read if cut == 0 else frozenset()) | (work.finetune_read if share else frozenset())
        row = sum(math.prod(s) for s in cut_shapes(network, cut, backbone.cuts)) * 4
        below = compute_below(network, cut) if cut < backbone.cuts else 0.0
        kept = tuple(sorted({e % views for e in read}))
        cuts.append(Cut(cut, tuple(d for d in served if d or cut == 0), row, below, kept, epochs))
    return cuts


def make_cache(
    spec: JobSpec, backbone: Backbone, data: Data, task: Task, plan: CachePlan | None = None
) -> FeatureCache:
    """The job's feature cache, as ``spec.feature_cache`` and ``plan`` set it up."""
    store = Store(Path(spec.feature_cache.dir), spec.feature_cache.dtype)
    augment = spec.augmentation if spec.augmentation.changes_images else None
    cuts = sorted({backbone.cut_depth(d) for d in spec.cache_depths(backbone.num_layers)})
    return FeatureCache(backbone, data, augment, spec.views, spec.seed, store, task, cuts, plan)


def plan_cache(
    spec: JobSpec, backbone: Backbone, data: Data, task: Task, network: Any, budget: float
) -> FeatureCache:
    """The job's feature cache with its plan: what each cut takes against the memory ``budget`` (what the
    job holds already, images included, and a reserve for training counted first) and the room on disk
    (``feature_cache.max_disk_gb``, and the free space). Refuses before any work if even the head's
    features cannot be stored; makes room by removing the least recently used keys of other jobs."""
    settings = spec.feature_cache
    folder = Path(settings.dir)
    folder.mkdir(parents=True, exist_ok=True)
    limit = float(settings.max_disk_gb) * GB
    found = entries(folder)
    held = sum(e.bytes for e in found)
    free = shutil.disk_usage(folder).free
    images = data.x_train.nbytes + data.x_val.nbytes  # the plain way's pipeline copy, for depths trained from images
    kept = spec.kept_runs * weights_bytes(network, backbone, max(spec.depths(backbone.num_layers), default=0))
    memory = budget - resident_memory() - TRAINING_RESERVE - images - kept
    itemsize = np.dtype(settings.dtype).itemsize
    cuts = plan_cuts(spec, backbone, network)
    plan = make_plan(
        cuts, len(data.y_train), len(data.y_val), spec.views, itemsize, max(memory, 0), min(limit, free + held)
    )
    plan.budget, plan.kept = budget, kept
    check_head_fits(plan, folder, free, float(settings.max_disk_gb))
    log.info(plan.line())
    cache = make_cache(spec, backbone, data, task, plan)
    mine = cache.folders()
    new = plan.disk_needed() - sum(e.bytes for e in found if e.folder in mine)
    removed = evict(folder, min(limit, held + free - GB) - max(new, 0), mine)
    if removed:
        log.info(
            "feature cache: removed %d least recently used part(s) of other jobs (%s) to stay within %s",
            len(removed),
            gigabytes(sum(e.bytes for e in removed)),
            gigabytes(limit),
        )
    return cache
