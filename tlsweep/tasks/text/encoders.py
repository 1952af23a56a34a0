"""Text encoders: a pretrained text network from its config, with its own tokenizer before it.

Three kinds, each a ``tlsweep.backbone.Backbone`` whose preprocessing turns a batch of strings into
what its network reads, so the classifier takes raw strings (training, export and ``predict``):

- ``tiny_text``: tlsweep's bundled demo encoder (word embeddings and three residual convolution
  blocks, pretrained by ``scripts/pretrain_tiny_text.py``), behind a ``TextVectorization`` of its
  own vocabulary. Its units are layers, as a Keras backbone's.
- a TF Hub text embedding (nnlm, the Universal Sentence Encoder): a SavedModel that takes strings
  and tokenizes inside. It has no layers: stage 2 unfreezes its blocks (variables by name scope),
  which for the nnlm embeddings is the whole embedding.
- a KerasHub text preset (BERT, DistilBERT): its own tokenizer and packer before a network laid out
  flat, one layer per transformer block: unfreeze depth counts the top blocks (with the pooler).
"""

from __future__ import annotations

import logging
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import keras

from tlsweep.backbone import Backbone, Inputs, units
from tlsweep.errors import TlsweepError, first_line
from tlsweep.groups import BackboneSpec

log = logging.getLogger(__name__)

TEXT = Inputs((), "string", "text")  # what a text classifier takes: one string per example
BUNDLED = {"tiny_text": ("weights/tiny_text.weights.h5", "weights/tiny_text.vocab.txt")}  # inside the package
SEQUENCE_LENGTH = 64  # tokens the tiny encoder reads of each text
PRESET_SEQUENCE_LENGTH = 128  # a KerasHub preset's tokens per text unless backbone.sequence_length says otherwise


def tiny_text_encoder(
    vocabulary_size: int, sequence_length: int = SEQUENCE_LENGTH, width: int = 64, name: str = "tiny_text"
) -> keras.Model:
    """tlsweep's demo text encoder: token ids → word embeddings → three residual convolution blocks → the mean
    over the text's tokens (14 layers, about 0.6M parameters with an 8,000-word vocabulary)."""
    ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    x, real = TokenEmbedding(vocabulary_size, width, name="embedding")(ids)  # and where the tokens are
    for i in (1, 2, 3):
        y = keras.layers.Conv1D(width, 3, padding="same", activation="relu", name=f"block{i}_a")(x)
        y = keras.layers.Conv1D(width, 3, padding="same", name=f"block{i}_b")(y)
        x = keras.layers.Add(name=f"block{i}_add")([x, y])
        x = keras.layers.LayerNormalization(name=f"block{i}_norm")(x)
    return keras.Model(ids, TokenMean(name="pool")([x, real]), name=name)


@keras.saving.register_keras_serializable(package="tlsweep")
class TokenEmbedding(keras.layers.Layer):
    """Word embeddings of token ids, and where a text has tokens (1) or padding (0, token id 0).

    One layer with both, at the bottom of the encoder: every tensor that reaches the top of the encoder
    is then made by a layer below it, so the feature cache and stage 2 can cut the encoder anywhere."""

    def __init__(self, vocabulary_size: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary_size, self.width = vocabulary_size, width
        self.embedding = keras.layers.Embedding(vocabulary_size, width, name="embedding")

    def build(self, input_shape: Any) -> None:
        self.embedding.build(input_shape)

    def call(self, ids: Any) -> Any:
        ids = keras.ops.cast(ids, "int32")
        return self.embedding(ids), keras.ops.cast(keras.ops.not_equal(ids, 0), "float32")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape, self.width), tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "width": self.width}


@keras.saving.register_keras_serializable(package="tlsweep")
class TokenMean(keras.layers.Layer):
    """The mean of a text's token vectors over its tokens (``TokenMask``), its padding left out."""

    def call(self, inputs: Any) -> Any:
        vectors, real = inputs
        real = keras.ops.cast(real, vectors.dtype)[..., None]
        return keras.ops.sum(vectors * real, axis=1) / keras.ops.maximum(keras.ops.sum(real, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0][0], input_shape[0][-1])


def vectorizer(vocabulary: list[str], sequence_length: int = SEQUENCE_LENGTH) -> keras.layers.Layer:
    """The tiny encoder's tokenizer: lower case, punctuation off, words to ids (0: padding, 1: unknown)."""
    return keras.layers.TextVectorization(
        standardize="lower_and_strip_punctuation",
        split="whitespace",
        output_mode="int",
        output_sequence_length=sequence_length,
        vocabulary=vocabulary,
        name="preprocessing",
    )


def bundled(name: str) -> tuple[Path, list[str]]:
    """The bundled weights file and vocabulary of a demo encoder."""
    weights, vocabulary = (Path(str(resources.files("tlsweep").joinpath(p))) for p in BUNDLED[name])
    return weights, vocabulary.read_text(encoding="utf-8").splitlines()


def load_encoder(cfg: BackboneSpec) -> Backbone:
    """The text encoder ``cfg`` describes, its weights loaded, failing early and in one line."""
    if cfg.handle:
        return _hub(cfg)
    if cfg.preset:
        return _preset(cfg)
    return _tiny(cfg)


def _tiny(cfg: BackboneSpec) -> Backbone:
    if cfg.name not in BUNDLED and cfg.weights == "bundled":
        raise TlsweepError(f"backbone {cfg.name} has no bundled weights; use a weights file or backbone.weights=null")
    weights_file, vocabulary = bundled("tiny_text")
    length = int(cfg.sequence_length or SEQUENCE_LENGTH)
    factory = partial(tiny_text_encoder, len(vocabulary) + 2, length, name="backbone")  # built as the backbone
    net = factory()
    source = ""
    if cfg.weights not in (None, "null"):
        path = weights_file if cfg.weights == "bundled" else Path(str(cfg.weights)).expanduser()
        if not path.is_file():
            raise TlsweepError(f"backbone {cfg.name}: weights file {path} does not exist; fix backbone.weights")
        try:
            net.load_weights(str(path))
        except Exception as e:
            raise TlsweepError(
                f"backbone {cfg.name}: weights file {path} does not fit this encoder ({first_line(e)[:160]}); point "
                "backbone.weights at weights saved from the same encoder"
            ) from e
        source = str(path)
    tokenizer = partial(vectorizer, vocabulary, length)
    return _backbone(cfg, net, factory, tokenizer, source, {"vocabulary": len(vocabulary)})


def _hub(cfg: BackboneSpec) -> Backbone:
    """A TF Hub text embedding: it takes the strings itself; refused, in one line, if it takes something else."""
    from tlsweep.hub import HubLayer, is_remote, resolve

    handle = cfg.handle if is_remote(str(cfg.handle)) else str(Path(str(cfg.handle)).expanduser().resolve())
    source = resolve(handle, cfg.name)  # download now, with this backbone's name in any error
    if cfg.weights not in ("hub", None):
        raise TlsweepError(f"backbone {cfg.name}: a hub model's weights come with it; set backbone.weights=hub")

    def network() -> keras.Model:
        layer = HubLayer(handle, name="hub")
        if layer.takes not in ("texts", None):
            raise TlsweepError(
                f"backbone {cfg.name}: the TF Hub model {handle} takes {layer.takes}, not texts; use it with an image "
                "dataset, or give backbone.handle a text embedding (e.g. nnlm-en-dim50)"
            )
        inputs = keras.Input((), dtype="string", name="text")
        return keras.Model(inputs, layer(inputs), name="backbone")

    net = network()
    blocks = len(net.layers[-1].blocks)
    if blocks == 1:
        log.info("backbone %s: one block (its whole embedding): any unfreeze depth from 1 trains all of it", cfg.name)
    return _backbone(cfg, net, network, partial(keras.layers.Identity, name="preprocessing"), source, {})


def _preset(cfg: BackboneSpec) -> Backbone:
    """A KerasHub text preset: its tokenizer and packer, then its network laid out one layer per block."""
    from tlsweep import kerashub

    preset = str(cfg.preset)
    preset = str(Path(preset).expanduser().resolve()) if kerashub.is_local(preset) else preset
    folder = kerashub.resolve_preset(preset, cfg.name)
    length = int(cfg.sequence_length or PRESET_SEQUENCE_LENGTH)
    hub = kerashub.keras_hub()
    try:
        preprocessor = hub.models.TextClassifierPreprocessor.from_preset(str(folder), sequence_length=length)
    except Exception as e:
        raise TlsweepError(
            f"backbone {cfg.name}: preset {folder} brings no text tokenizer ({first_line(e)[:160]}); give "
            "backbone.preset a KerasHub text preset (BERT, DistilBERT)"
        ) from e
    pad = int(getattr(preprocessor.tokenizer, "pad_token_id", 0) or 0)
    network = text_tower(str(folder), cfg.weights == "preset", length, pad)
    factory = partial(text_tower, str(folder), False, length, pad)
    preprocess = partial(TextPreprocessor, str(folder), length)
    about = {"sequence_length": length, "tokenizer": type(preprocessor.tokenizer).__name__}
    return _backbone(cfg, network, factory, preprocess, str(folder), about)


def _backbone(cfg: BackboneSpec, net: keras.Model, factory: Any, preprocess: Any, source: str, about: dict) -> Backbone:
    num_layers, cuts, unit, block_tops = units(net, bool(cfg.handle))
    log.info("backbone %s: %d %s, weights %s, reads texts", cfg.name, num_layers, unit, cfg.weights)
    return Backbone(cfg.name, TEXT, preprocess, factory, net.get_weights(), num_layers, cuts, unit, block_tops, source,
                    {"reads": "texts", **about})  # fmt: skip


@keras.saving.register_keras_serializable(package="tlsweep")
class TextPreprocessor(keras.layers.Layer):
    """A KerasHub preset's own tokenizer and packer as one layer: strings in, token ids out (padded to the
    sequence length)."""

    def __init__(self, folder: str, sequence_length: int, **kwargs: Any) -> None:
        kwargs.setdefault("name", "preprocessing")
        super().__init__(**kwargs)
        from tlsweep import kerashub

        self.folder, self.sequence_length = folder, sequence_length
        hub = kerashub.keras_hub()
        self.preprocessor = hub.models.TextClassifierPreprocessor.from_preset(folder, sequence_length=sequence_length)

    def call(self, texts: Any) -> Any:
        return self.preprocessor(texts)["token_ids"]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "folder": self.folder, "sequence_length": self.sequence_length}


@keras.saving.register_keras_serializable(package="tlsweep")
class PaddingMask(keras.layers.Layer):
    """1 where the token ids hold a token, 0 in the padding: what a transformer block's ``padding_mask`` takes."""

    def __init__(self, pad_id: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, ids: Any) -> Any:
        return keras.ops.cast(keras.ops.not_equal(keras.ops.cast(ids, "int32"), self.pad_id), "int32")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="tlsweep")
class FirstSegment(keras.layers.Layer):
    """Segment ids of single texts: all 0 (BERT was pretrained on pairs of segments)."""

    def call(self, ids: Any) -> Any:
        return keras.ops.zeros_like(keras.ops.cast(ids, "int32"))


def text_tower(folder: str, load_weights: bool, sequence_length: int, pad_id: int = 0) -> keras.Model:
    """A KerasHub BERT-family text preset's network laid out flat, one layer per transformer block: token ids in,
    one vector per text out (BERT's pooled output, or the first token where there is no pooler: DistilBERT).

    The preset's layers are copied (configuration and weights) into a graph of their own, with the padding
    mask and segment ids made from the token ids at its bottom, so that every tensor crossing a cut between
    blocks is made by a layer below the cut. KerasHub exports no other way to reach a backbone's blocks
    than its attributes (``token_embedding``, ``transformer_layers``, …): ``tests/test_text.py`` checks a
    BERT-shaped preset laid out so computes what the preset computes, and fails loudly if KerasHub changes."""
    from tlsweep import kerashub

    built = kerashub.keras_hub().models.Backbone.from_preset(folder, load_weights=load_weights)
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def copy(layer: keras.layers.Layer) -> keras.layers.Layer:
        fresh = type(layer).from_config(layer.get_config())
        copies.append((fresh, layer))
        return fresh

    ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    mask = PaddingMask(pad_id, name="padding_mask")(ids)
    if hasattr(built, "segment_embedding"):  # BERT
        tokens = copy(built.token_embedding)(ids)
        x = copy(built.embeddings_add)(
            (tokens, copy(built.position_embedding)(tokens), copy(built.segment_embedding)(FirstSegment()(ids)))
        )
    elif hasattr(built, "embeddings"):  # DistilBERT: token and position embeddings in one layer
        x = copy(built.embeddings)(ids)
    else:
        raise TlsweepError(
            f"KerasHub preset {folder} is a {type(built).__name__}; tlsweep lays out BERT-family text presets (BERT, "
            "DistilBERT): use one of those"
        )
    x = copy(built.embeddings_layer_norm)(x)
    for block in built.transformer_layers:
        x = copy(block)(x, padding_mask=mask)
    x = kerashub.TokenPooling("cls", name="first_token")(x)
    if hasattr(built, "pooled_dense"):
        x = copy(built.pooled_dense)(x)
    network = keras.Model(ids, x, name="backbone")
    for fresh, original in copies:
        fresh.set_weights(original.get_weights())
    return network
