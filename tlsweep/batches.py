"""Where a trial's batches come from: the images (the plain way) or the feature cache's tensors.

Both sources give the same batches: epoch ``e`` reads view ``e mod V`` in an order fixed by the
trial's seed and ``e`` (``EpochBatches``), so cached and plain training see the same examples in
the same order, and a trial trains the same whenever it runs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from tlsweep.cache.features import FeatureCache
from tlsweep.data import Data
from tlsweep.model import trainable_part


class Source(Protocol):
    """What a trial asks of its batch source, per unfreeze depth."""

    def cut(self, depth: int) -> int | None: ...

    def part(self, model: Any, depth: int) -> Any: ...

    def batches(self, depth: int, seed: int, batch_size: int) -> tuple[EpochBatches, EpochBatches]: ...


def _inputs(arrays: list[Any]) -> Any:
    """A batch's inputs as a model takes them: one array alone, several as a tuple."""
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _text(array: Any) -> bool:
    """Whether an array holds texts (strings stay strings; numbers are fed as float32)."""
    return np.asarray(array[:0]).dtype.kind in "OUS"


class EpochBatches:
    """Batches of one epoch at a time: epoch ``e`` reads view ``e mod V`` in an order fixed by (seed, e).

    A view is a list of arrays (images, or the cached tensors at a cut through the backbone) with
    one row per example; None for a view no epoch reads here. Fixing the order and the view by the
    epoch number makes a trial repeatable on its own (resume) and makes cached and plain training
    see the same batches. Rows are gathered by index, so arrays read from disk work.
    """

    def __init__(
        self, views: list[list[Any] | None], labels: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0
    ) -> None:
        self.period = len(views)  # epoch e reads view e mod period
        self.slot = {v: i for i, v in enumerate(v for v, view in enumerate(views) if view is not None)}
        self.views = [view for view in views if view is not None]
        self.labels = np.asarray(labels)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        self._rows: Any = None  # the in-pipeline copy of rows(epoch), once dataset() made one
        self._tensors: Any = None  # the in-pipeline copy of the views and labels, made once for every trial
        self._dataset: Any = None

    def reseed(self, seed: int, batch_size: int) -> EpochBatches:
        """The same examples in another trial's order and batch size: a job copies its arrays into the pipeline
        once, not per trial (a new batch size only gathers them anew)."""
        if batch_size != self.batch_size:
            self.batch_size, self._dataset = batch_size, None
        self.seed = seed
        self.set_epoch(0)
        return self

    def dataset(self) -> Any:
        """This as a ``tf.data`` pipeline for ``fit``; pass ``callback()`` too so it knows the epoch, and
        ``steps_per_epoch=steps`` so that Keras makes one iterator an epoch, not two.

        Arrays in memory are copied into TensorFlow once and each batch is gathered inside the
        pipeline (a fixed order needs no gathering: an iterator over a gathering pipeline costs
        about 10 ms to make, and Keras makes one or two an epoch). Arrays on disk are read batch by
        batch in Python instead (slower per step, but never loaded whole). All give the batches
        ``batch`` gives.
        """
        import tensorflow as tf

        if self._dataset is not None:
            return self._dataset
        if any(not isinstance(a, np.ndarray) or isinstance(a, np.memmap) for view in self.views for a in view):
            self._dataset = self._read_in_python()
            return self._dataset
        n, size = len(self.labels), self.batch_size
        fixed = not self.shuffle and self.period == 1  # the same batches every epoch: nothing to gather
        if fixed and all(a.dtype == np.float32 for a in self.views[0]):  # uint8 images stay uint8 until batched
            if self._tensors is None:
                with tf.device("/CPU:0"):
                    self._tensors = (_inputs([tf.constant(a) for a in self.views[0]]), tf.constant(self.labels))
            self._dataset = tf.data.Dataset.from_tensor_slices(self._tensors).batch(size)
            return self._dataset
        with tf.device("/CPU:0"):  # the pipeline's tensors stay on the host
            if self._tensors is None:
                labels = tf.Variable(self.labels, trainable=False)
                self._tensors = ([self._stack(k) for k in range(len(self.views[0]))], labels)
                first = self.epoch if self.epoch % self.period in self.slot else min(self.slot)  # set at every epoch
                self._rows = tf.Variable(self.rows(first), trainable=False)
        stacked, labels = self._tensors

        def gather(i: Any) -> tuple[Any, Any]:
            rows = self._rows[i * size : (i + 1) * size]
            x = [tf.gather(t, rows) for t in stacked]
            x = [t if t.dtype == tf.string else tf.cast(t, tf.float32) for t in x]
            return _inputs(x), tf.gather(labels, rows % n)

        self._dataset = tf.data.Dataset.range(self.steps).map(gather).prefetch(tf.data.AUTOTUNE)
        return self._dataset

    def _stack(self, k: int) -> Any:
        """Tensor ``k`` of every view, one after another, in one variable: copied view by view, so the
        copy never needs a third array's memory."""
        import tensorflow as tf

        first = self.views[0][k]
        shape = (len(self.views) * len(first), *first.shape[1:])
        if _text(first):  # texts: one constant of every view's strings (a variable of strings holds no more)
            return tf.constant(np.concatenate([np.asarray(view[k], dtype=object) for view in self.views]))
        stacked = tf.Variable(tf.zeros(shape, first.dtype), trainable=False)
        for i, view in enumerate(self.views):
            stacked[i * len(first) : (i + 1) * len(first)].assign(view[k])
        return stacked

    def _read_in_python(self) -> Any:
        import tensorflow as tf

        specs = [tf.TensorSpec((None, *a.shape[1:]), tf.string if _text(a) else tf.float32) for a in self.views[0]]
        x_spec = _inputs(specs)
        y_spec = tf.TensorSpec((None,), tf.as_dtype(self.labels.dtype))

        def generate() -> Any:
            epoch = self.epoch
            for i in range(self.steps):
                yield self.batch(i, epoch)

        ds = tf.data.Dataset.from_generator(generate, output_signature=(x_spec, y_spec))
        return ds.apply(tf.data.experimental.assert_cardinality(self.steps)).prefetch(tf.data.AUTOTUNE)

    @property
    def steps(self) -> int:
        """Batches per epoch."""
        return -(-len(self.labels) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The coming epoch: its view and order. The pipeline reads them when ``fit`` starts the epoch.

        An epoch whose view was not made here (a trial's stage 2 starts at epoch 0 of the axis, but
        reads its first stage-2 epoch) is remembered, and refused only when it is trained on.
        """
        self.epoch = epoch
        if self._rows is not None and epoch % self.period in self.slot:
            self._rows.assign(self.rows(epoch))

    def callback(self) -> Any:
        """A Keras callback that tells this which epoch ``fit`` is in (``initial_epoch`` included).

        With ``fit(steps_per_epoch=steps)`` Keras makes an epoch's iterator before the epoch begins;
        a ``tf.data`` iterator draws nothing until asked, so it still reads the epoch set here.
        """
        import keras

        source = self

        class SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                source._slot(epoch)  # an epoch trained on a view never made here is a bug: say so
                source.set_epoch(epoch)

        return SetEpoch()

    def rows(self, epoch: int) -> np.ndarray:
        """The rows ``epoch`` reads, in order, counting through the views stacked one after another."""
        return self._slot(epoch) * len(self.labels) + self.order(epoch)

    def _slot(self, epoch: int) -> int:
        """Where the view epoch ``epoch`` reads is among the views kept."""
        view = epoch % self.period
        if view not in self.slot:
            raise RuntimeError(f"epoch {epoch} reads view {view}, which was not made at this cut")
        return self.slot[view]

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.labels)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def batch(self, i: int, epoch: int) -> tuple[Any, np.ndarray]:
        """Batch ``i`` of ``epoch``."""
        idx = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        arrays = [np.asarray(a[idx], dtype=object if _text(a) else np.float32) for a in self.views[self._slot(epoch)]]
        return _inputs(arrays), self.labels[idx]


class PlainData:
    """The plain way: every epoch runs the whole model, augmentation included, on the images."""

    def __init__(self, data: Data, train_views: list[np.ndarray] | None = None) -> None:
        views = [[v] for v in train_views] if train_views is not None else [[data.x_train]]
        self.train = EpochBatches(views, data.y_train, 1, shuffle=True)  # batch size: each trial's (``batches``)
        self.val = EpochBatches([[data.x_val]], data.y_val, 1, shuffle=False)

    def cut(self, depth: int) -> int | None:
        """Where the batches enter the classifier: no cut, the images go in whole."""
        return None

    def part(self, model: Any, depth: int) -> Any:
        """What trains: the whole classifier (a new model over its layers)."""
        import keras

        return keras.Model(model.inputs, model.outputs, name="classifier")

    def batches(self, depth: int, seed: int, batch_size: int) -> tuple[EpochBatches, EpochBatches]:
        """Training and validation batches of the images, in the order of the trial's ``seed``."""
        return self.train.reseed(seed, batch_size), self.val.reseed(seed, batch_size)


class CachedData:
    """Training above the cut, on cached tensors: the same batches as the plain way, without the bottom.

    A depth whose cut the cache's plan does not keep trains the plain way, on ``plain``.
    """

    def __init__(self, cache: FeatureCache, plain: PlainData | None = None) -> None:
        self.cache = cache
        self.plain = plain
        self._batches: dict[int, tuple[EpochBatches, EpochBatches]] = {}  # by cut

    def _plain(self, depth: int) -> PlainData | None:
        cut = self.cache.backbone.cut_depth(depth)
        if self.cache.cached(cut):
            return None
        if self.plain is None:
            self.plain = PlainData(self.cache.data)
        return self.plain

    def cut(self, depth: int) -> int | None:
        """Where the batches enter the classifier: the cut below the top ``depth`` units (None: the images)."""
        plain = self._plain(depth)
        return plain.cut(depth) if plain else self.cache.backbone.cut_depth(depth)

    def part(self, model: Any, depth: int) -> Any:
        """What trains: the classifier above the cut for ``depth``, sharing its layers."""
        plain = self._plain(depth)
        return plain.part(model, depth) if plain else trainable_part(model, self.cut(depth))

    def batches(self, depth: int, seed: int, batch_size: int) -> tuple[EpochBatches, EpochBatches]:
        """Training and validation batches of the cached tensors at the cut for ``depth``, in the
        order of the trial's ``seed``."""
        plain = self._plain(depth)
        if plain:
            return plain.batches(depth, seed, batch_size)
        data, cut = self.cache.data, self.cut(depth)
        if cut not in self._batches:
            train = EpochBatches(self.cache.train_views(cut), data.y_train, 1, shuffle=True)
            val = EpochBatches([self.cache.val(cut)], data.y_val, 1, shuffle=False)
            self._batches[cut] = (train, val)
        train, val = self._batches[cut]
        return train.reseed(seed, batch_size), val.reseed(seed, batch_size)
