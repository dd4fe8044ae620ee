"""The decisions: "live" and "match" are decided here and nowhere else, with thresholds from one
source (:class:`Thresholds`, built once from the settings and held by the engine's config).

Everything that says live or spoof (the Instant API, video liveness, the live stream, the LIVENESS
analysis) calls :func:`is_live`; everything that says same person or not (Verify, BIOMETRY,
BLACKLIST, a watch-list search, the identity check of a video) calls :func:`is_match`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    """Every decision threshold of the server."""

    #: A face is live when its real probability is at least this.
    liveness: float
    #: Two faces (1:1) are the same person when their embedding distance is below this.
    match_distance: float
    #: A watch-list (1:N) hit is a match when its distance is below this.
    search_distance: float
    #: BIOMETRY: distances this far above ``match_distance`` go to an operator.
    biometry_grey_zone: float


def is_live(score: float, threshold: float) -> bool:
    """A real probability at or above the threshold is a live person."""
    return score >= threshold


def is_match(distance: float, threshold: float) -> bool:
    """A distance below the threshold is the same person."""
    return distance < threshold


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two embeddings (dlib's native metric), computed in float64."""
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))


def similarity(distance: float, threshold: float) -> float:
    """A distance mapped onto 0..1 so that the decision threshold lands at exactly 0.5."""
    return float(min(1.0, max(0.0, 1.0 - distance / (2.0 * threshold))))
