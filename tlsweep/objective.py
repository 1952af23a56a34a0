"""The metric a search optimises, which way, and how far one measurement of it can move by noise alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

OBJECTIVE_NAMES = ("val_accuracy", "val_loss", "val_balanced_accuracy", "val_macro_f1", "accuracy", "loss")
LOSS_NOISE = 0.02  # a loss's measurement noise, relative: losses have no binomial yardstick
Z = 1.96  # 95%, two-sided


@dataclass(frozen=True)
class Objective:
    """The metric a search optimises, and which way: losses are minimised, everything else maximised."""

    name: str

    @property
    def minimise(self) -> bool:
        return self.name.endswith("loss")

    @property
    def proportion(self) -> bool:
        """Whether the metric is a share of the validation images (it moves in steps of one image), not a loss."""
        return self.name in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1", "accuracy")

    def better(self, value: float, than: float) -> bool:
        return value < than if self.minimise else value > than

    def noise(self, value: float, images: int | None) -> float:
        """One measurement's standard error at ``value``: for a share of ``images`` validation images
        √(p(1−p)/n), at least one image's worth; for a loss, ``LOSS_NOISE`` of it."""
        if self.proportion and images:
            p = min(max(value, 0.0), 1.0)
            return math.sqrt(max(p * (1 - p), 1.0 / images) / images)
        return LOSS_NOISE * abs(value)

    def margin(self, value: float, other: float, images: int | None, other_images: int | None = None) -> float:
        """How far two single measurements (one run each) can lie apart by noise alone: 1.96·√(σ₁² + σ₂²).

        The one rule for "clearly behind" on one draw: the race's cut between jobs and the finalists' entry
        both use it. A seed's run is a fresh draw of the validation errors, so its spread is about this noise."""
        other_images = images if other_images is None else other_images
        return Z * math.hypot(self.noise(value, images), self.noise(other, other_images))

    def key(self, value: float) -> float:
        """A sort key that puts the best value first."""
        return value if self.minimise else -value
