"""Texts: what transferring a text encoder adds to the shared pipeline.

The datasets (``data``: a folder of ``.txt`` files per class, a table, the embedded demo) and the
encoders with their tokenizers (``encoders``: the bundled demo encoder, TF Hub text embeddings,
KerasHub text presets). A text classifier takes raw strings: the tokenizer is inside the model, so
the feature cache, the export and ``predict`` hand it texts as they are. Texts are not augmented.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsweep.cache.store import Store
from tlsweep.data import Data
from tlsweep.errors import TlsweepError
from tlsweep.folders import file_digest, fingerprint
from tlsweep.groups import AugmentationSpec, DatasetSpec
from tlsweep.spec import JobSpec
from tlsweep.tasks.text.data import TABLE_EXTENSIONS, TEXT_EXTENSIONS, load_texts, read_table, read_text

if TYPE_CHECKING:  # the network itself is Keras': imported by a task's backbones, when a job loads one
    from tlsweep.backbone import Backbone


class Text:
    """The text task."""

    name = "text"
    examples = "texts"
    datasets = ("text_folder", "text_table", "text_demo")

    def load_backbone(self, spec: JobSpec) -> Backbone:
        from tlsweep.tasks.text.encoders import load_encoder

        return load_encoder(spec.backbone)

    def load_data(
        self, dataset: DatasetSpec, image_size: int | None, store: Store | None = None, max_bytes: float | None = None
    ) -> Data:
        return load_texts(dataset)

    def augmentation(self, cfg: AugmentationSpec, seed: int) -> Any:
        return None  # the config refuses an augmentation of texts before anything runs

    def augmentation_version(self) -> int:
        return 0

    def fingerprint(self, dataset: DatasetSpec) -> dict[str, Any]:
        if dataset.name == "text_folder":
            return fingerprint(dataset, TEXT_EXTENSIONS)
        if dataset.name == "text_table" and dataset.path:
            path = Path(str(dataset.path)).expanduser()
            if not path.is_file():
                raise TlsweepError(f"dataset.path {path} is not a file; give a CSV, TSV or JSONL file")
            return file_digest(path)
        return {"source": dataset.name}

    def has_test_folder(self, dataset: DatasetSpec) -> bool:
        return dataset.name == "text_folder" and bool(dataset.path) and (Path(str(dataset.path)) / "test").is_dir()

    def describe_input(self, model: Any, dataset: DatasetSpec) -> dict[str, Any]:
        """What an exported model takes, for its record and card; ``predict`` reads a table's texts from the column
        the training table had them in."""
        about = "texts: a batch of strings, shape (batch,); the tokenizer is inside the model"
        return {"input": about, "text_column": dataset.text_column}

    def read(self, paths: list[Path], record: dict[str, Any]) -> tuple[list[str], np.ndarray, list[str]]:
        """The texts to classify in ``paths``: ``.txt`` files (one text each), folders of them, and tables (a row
        each, its ``text`` column); their names, the texts, and the names that could not be read."""
        names, texts, unreadable = [], [], []
        for item in paths:
            if item.is_dir():
                found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_EXTENSIONS)
                if not found:
                    raise TlsweepError(f"{item} has no texts (.txt files)")
            elif item.is_file() and item.suffix.lower() in TABLE_EXTENSIONS:
                column = str(record.get("text_column") or "text")
                rows = list(enumerate(read_table(item, column, column)[0], 1))
                names += [f"{item}:{row}" for row, text in rows if text is not None]
                texts += [text for _, text in rows if text is not None]
                unreadable += [f"{item}:{row}" for row, text in rows if text is None]
                continue
            elif item.is_file():
                found = [item]
            elif item.exists():  # a pipe, a device, a socket: reading one could wait forever
                raise TlsweepError(f"{item} is not a text file or a folder (a pipe or a device?); give .txt files")
            else:
                raise TlsweepError(f"{item} does not exist")
            read = [(str(p), read_text(p)) for p in found]
            names += [name for name, text in read if text is not None]
            texts += [text for _, text in read if text is not None]
            unreadable += [name for name, text in read if text is None]
        return names, np.array(texts, dtype=object), unreadable

    def register_layers(self) -> None:
        """Import the modules whose layers a saved text classifier holds (KerasHub's too, when installed)."""
        from tlsweep.tasks.text import encoders  # noqa: F401

        with contextlib.suppress(ImportError):  # only a KerasHub preset's classifier needs it
            import keras_hub  # noqa: F401


TEXT = Text()
