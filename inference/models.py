"""Pre- and post-processing of the per-face models (embedding, liveness), as pure numpy."""

from __future__ import annotations

import numpy as np


def chips_to_tensor(chips: list[np.ndarray]) -> np.ndarray:
    """H×W×3 uint8 images → N×3×H×W float32 0..255 (what dlib-resnet and MiniFASNet take)."""
    return np.ascontiguousarray(np.stack(chips).transpose(0, 3, 1, 2), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def ensemble_real_probability(per_model_logits: list[np.ndarray]) -> tuple[float, list[float]]:
    """Mean real-class (class 1) probability over the ensemble, and each member's."""
    members = [float(softmax(logits)[1]) for logits in per_model_logits]
    return float(np.mean(members)), members
