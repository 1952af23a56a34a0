"""A pretrained backbone, whatever it reads: its weights in memory, the layer before it, and where it can be cut.

Every task (``tlsweep.tasks``) loads its backbones into a ``Backbone``: an image backbone after its
pixel rescaling, a text encoder after its tokenizer. The rest of the pipeline — the classifier, the
feature cache, unfreezing the top — sees only this: the network's layers (or a TF Hub model's
blocks, a transformer's blocks), the tensors that cross a cut between them, and the weights every
trial starts again from (fine-tuning changes a network's weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tlsweep.hub import HubLayer
from tlsweep.kerashub import blocks_of


@dataclass(frozen=True)
class Inputs:
    """What a classifier takes, per example: images ``(size, size, 3)`` float32 pixels 0..255; texts ``()`` strings."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = "image"


@dataclass
class Backbone:
    """A backbone with its pretrained weights in memory; ``build()`` gives a new network holding them."""

    name: str
    inputs: Inputs  # what the classifier takes, before ``preprocess``
    preprocess: Callable[[], keras.Layer]  # a new layer from the inputs to what the network takes (frozen, no weights)
    factory: Callable[[], keras.Model]  # the architecture, weights not set
    weights: list[np.ndarray]
    num_layers: int  # the units of unfreeze depth: Keras layers, or a hub model's or transformer's blocks
    cuts: int  # Keras layers in the network: a hub model is one layer, cut only below or above
    unit: str = "layers"  # what num_layers counts: "layers", or "blocks"
    block_tops: tuple[int, ...] = ()  # a transformer's: network layers from the top down to block n (n = 1, 2, …)
    source: str = ""  # where the weights were read from: a file, a hub or preset folder, Keras' cache; "" for none
    about: dict[str, Any] = field(default_factory=dict)  # what its outputs depend on besides the weights (cache key)

    def cut_depth(self, depth: int) -> int:
        """Where the frozen bottom ends, in network layers, when the top ``depth`` units are unfrozen.

        A transformer's top ``depth`` blocks come with the norm and pooling above them; all of its
        blocks, with the stem below them too.
        """
        if depth <= 0 or not self.block_tops:
            return min(max(depth, 0), self.cuts)
        return self.cuts if depth >= self.num_layers else self.block_tops[depth - 1]

    def unit_depth(self, cut: int) -> int:
        """The unfreeze depth whose cut is ``cut`` (the inverse of ``cut_depth``), for messages."""
        if not self.block_tops:
            return cut
        return next((d for d in range(self.num_layers + 1) if self.cut_depth(d) == cut), cut)

    def build(self) -> keras.Model:
        """A new backbone network named ``backbone`` holding the pretrained weights."""
        net = self.factory()
        net.set_weights(self.weights)
        if net.name == "backbone":
            return net
        return keras.Model(net.input, net.output, name="backbone")


def units(network: keras.Model, handle: bool = False) -> tuple[int, int, str, tuple[int, ...]]:
    """How a network unfreezes: its units (layers, a hub model's blocks, or a transformer's blocks), its layers
    (the cuts), what the units are, and a transformer's block tops. ``handle``: it came from TF Hub."""
    cuts = len(backbone_layers(network))
    blocks = transformer_blocks(network)
    block_tops = tuple(cuts - position for position in reversed(blocks))
    count = len(blocks) if blocks else depth_units(network)
    return count, cuts, "blocks" if handle or blocks else "layers", block_tops


def backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers from input to output, without its input layer."""
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def hub_layer(backbone: keras.Model) -> HubLayer | None:
    """The backbone's TF Hub SavedModel, when it is one (see ``tlsweep.hub``)."""
    layers = backbone_layers(backbone)
    return layers[0] if len(layers) == 1 and isinstance(layers[0], HubLayer) else None


def transformer_blocks(backbone: keras.Model) -> list[int]:
    """Where a transformer's blocks are among the backbone's layers (empty for any other backbone)."""
    return blocks_of(backbone)


def depth_units(backbone: keras.Model) -> int:
    """How deep the backbone can be unfrozen: its layers, or a hub model's blocks (see ``tlsweep.hub``)."""
    hub = hub_layer(backbone)
    return len(hub.blocks) if hub is not None else len(backbone_layers(backbone))


def crossing_tensors(backbone: keras.Model, cut: int) -> list[Any]:
    """The tensors that flow from the frozen bottom into the top ``cut`` layers of ``backbone``.

    A cut inside a residual block has more than one (the block's input reaches its ``add`` by the
    skip connection); a cut at 0 has one, the backbone's output.
    """
    layers = backbone_layers(backbone)
    if cut <= 0:
        return [backbone.output]
    top = layers[len(layers) - cut :]
    produced_above = {id(t) for layer in top for t in keras.tree.flatten(layer.output)}
    crossing: list[Any] = []
    for layer in top:
        for tensor in keras.tree.flatten(layer.input):
            if id(tensor) not in produced_above and all(tensor is not c for c in crossing):
                crossing.append(tensor)
    return crossing
