"""Images: what transferring an image backbone adds to the shared pipeline.

Decoding (``decode``), the datasets (``data``: a folder, TFDS, the embedded digits), random
augmentation (``augment``) and the backbones with their pixel preprocessing (``backbones``, and
``presets`` for KerasHub image towers). Everything else — the search, the feature cache, the runs,
finalists, the race, the report, the export — is the same for every task.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsweep.cache.store import Store
from tlsweep.data import Data
from tlsweep.errors import TlsweepError
from tlsweep.folders import fingerprint
from tlsweep.groups import AugmentationSpec, DatasetSpec
from tlsweep.spec import JobSpec

if TYPE_CHECKING:  # the network itself is Keras': imported by a task's backbones, when a job loads one
    from tlsweep.backbone import Backbone


class Images:
    """The image task."""

    name = "images"
    examples = "images"
    datasets = ("digits", "folder", "tf_flowers")

    def load_backbone(self, spec: JobSpec) -> Backbone:
        from tlsweep.tasks.images.backbones import load_backbone

        return load_backbone(spec.backbone, spec.image_size)

    def load_data(
        self, dataset: DatasetSpec, image_size: int | None, store: Store | None = None, max_bytes: float | None = None
    ) -> Data:
        from tlsweep.tasks.images.data import load_images

        return load_images(dataset, int(image_size or 0), store, max_bytes)

    def augmentation(self, cfg: AugmentationSpec, seed: int) -> Any:
        """The ``augmentation`` group's random flip, rotation, zoom and stretch, as one warp per image
        (``augment``); active in training only. None when it changes nothing."""
        from tlsweep.tasks.images.augment import RandomAffine

        if not cfg.changes_images:
            return None
        return RandomAffine(cfg.flip, cfg.rotation, cfg.zoom, cfg.height, cfg.width, seed=seed, name="augmentation")

    def augmentation_version(self) -> int:
        """How views are augmented, in the feature cache's key: views made another way are not reused."""
        from tlsweep.tasks.images.augment import VERSION

        return VERSION

    def fingerprint(self, dataset: DatasetSpec) -> dict[str, Any]:
        from tlsweep.tasks.images.decode import IMAGE_EXTENSIONS

        return fingerprint(dataset, IMAGE_EXTENSIONS) if dataset.name == "folder" else {"source": dataset.name}

    def has_test_folder(self, dataset: DatasetSpec) -> bool:
        return dataset.name == "folder" and bool(dataset.path) and (Path(str(dataset.path)) / "test").is_dir()

    def describe_input(self, model: Any, dataset: DatasetSpec) -> dict[str, Any]:
        """What an exported model takes, for its record and card."""
        size = int(model.input_shape[1])
        return {
            "image_size": size,
            "input": "RGB pixels 0..255, float32, shape (batch, size, size, 3); preprocessing is inside the model",
        }

    def read(self, paths: list[Path], record: dict[str, Any]) -> tuple[list[str], np.ndarray, list[str]]:
        """The examples to classify in ``paths`` (image files, folders of them), decoded as in training: their
        names, the images, and the names that could not be read."""
        from tlsweep.tasks.images.decode import IMAGE_EXTENSIONS, decode_image

        size = record.get("image_size")
        if not isinstance(size, int):
            raise TlsweepError("the export's record gives no image size; re-export with python -m tlsweep.export")
        found: list[Path] = []
        for item in paths:
            if item.is_dir():
                inside = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
                if not inside:
                    raise TlsweepError(f"{item} has no images ({'/'.join(IMAGE_EXTENSIONS)})")
                found += inside
            elif item.is_file():
                found.append(item)
            elif item.exists():  # a pipe, a device, a socket: reading one could wait forever
                raise TlsweepError(f"{item} is not an image file or a folder (a pipe or a device?); give image files")
            else:
                raise TlsweepError(f"{item} does not exist")
        decoded = [(str(p), decode_image(p, size)) for p in found]
        good = [(name, image) for name, image in decoded if image is not None]
        images = np.stack([image for _, image in good]) if good else np.zeros((0, size, size, 3), np.uint8)
        return [name for name, _ in good], images, [name for name, image in decoded if image is None]

    def register_layers(self) -> None:
        """Import the modules whose layers a saved image classifier holds, so Keras can load it."""
        from tlsweep.tasks.images import augment, presets  # noqa: F401


IMAGES = Images()
