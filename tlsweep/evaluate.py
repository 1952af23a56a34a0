"""The held-out test: accuracy, per-class precision and recall, and the confusion matrix of one model."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Scores of ``probabilities`` (N, classes) against the true ``labels`` (N,), as plain JSON values.

    ``confusion[i][j]`` counts images of class i predicted as class j.
    """
    predicted = np.asarray(probabilities).argmax(axis=1)
    labels = np.asarray(labels)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "classes": [
            {
                "name": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "images": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
