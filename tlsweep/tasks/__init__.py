"""Tasks: what each kind of input adds to the shared pipeline. Images (``images/``), texts (``text/``).

A task reads its datasets into ``tlsweep.data.Data``, loads its backbones into
``tlsweep.backbone.Backbone`` (the network, the layer before it, where it can be cut), may augment
its training examples, fingerprints its data for a resume, describes what an exported model takes,
and reads new examples for ``predict``. The search, the feature cache, the runs, finalists, pruning,
the budget, the race, the records, the report and TensorBoard are shared and do not ask which task
they serve. A job's task follows from its dataset (``dataset.task``); a new task is a new folder here
with an object of the same shape, listed in ``TASKS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tlsweep.cache.store import Store
from tlsweep.data import Data
from tlsweep.errors import TlsweepError
from tlsweep.groups import AugmentationSpec, BackboneSpec, DatasetSpec
from tlsweep.spec import JobSpec
from tlsweep.tasks.images import IMAGES
from tlsweep.tasks.text import TEXT

if TYPE_CHECKING:  # the network itself is Keras': imported by a task's backbones, when a job loads one
    from tlsweep.backbone import Backbone


class Task(Protocol):
    name: str  # as dataset.task names it
    examples: str  # what messages call its examples: images, texts
    datasets: tuple[str, ...]  # the dataset options it reads

    def load_backbone(self, spec: JobSpec) -> Backbone: ...

    def load_data(
        self, dataset: DatasetSpec, image_size: int | None, store: Store | None = None, max_bytes: float | None = None
    ) -> Data: ...

    def augmentation(self, cfg: AugmentationSpec, seed: int) -> Any: ...

    def augmentation_version(self) -> int: ...

    def fingerprint(self, dataset: DatasetSpec) -> dict[str, Any]: ...

    def has_test_folder(self, dataset: DatasetSpec) -> bool: ...

    def describe_input(self, model: Any, dataset: DatasetSpec) -> dict[str, Any]: ...

    def read(self, paths: list[Path], record: dict[str, Any]) -> tuple[list[str], np.ndarray, list[str]]: ...

    def register_layers(self) -> None: ...


TASKS: dict[str, Task] = {task.name: task for task in (IMAGES, TEXT)}


def task_of(dataset: DatasetSpec) -> Task:
    """The task a dataset is for."""
    return TASKS[dataset.task]


def task_named(name: Any) -> Task:
    """The task an export's record names (records made before texts were a task hold images)."""
    if name is None:
        return IMAGES
    if name not in TASKS:
        raise TlsweepError(f"the export is for task '{name}', which this tlsweep does not know ({', '.join(TASKS)})")
    return TASKS[name]


def task_for_backbone(backbone: BackboneSpec) -> Task:
    """The task whose backbones ``backbone`` is (a generic TF Hub model's is known when loaded: images first)."""
    return TASKS.get(backbone.input or "", IMAGES)


def register_layers() -> None:
    """Make every task's own layers known to Keras, as loading a saved classifier needs."""
    for task in TASKS.values():
        task.register_layers()


def load_classifier(path: Any) -> Any:
    """A saved classifier, whatever its task: tlsweep's own layers (TF Hub SavedModels, KerasHub towers,
    augmentation, tokenizers) registered first."""
    import keras

    register_layers()
    return keras.saving.load_model(path, compile=False)
