"""Face matching accuracy on the ORL database, through the running server's engine.

MODELS.md measured the raw model pipeline at EER 1.2 % and rank-1 99.8 % on ORL; the issue asks the
served engine to reach the raw model's accuracy (EER ≤ 1.5 %).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ORL, read
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

IMPOSTOR_SAMPLE = 20_000
SEED = 20261122

#: The 400 ORL templates (400×128) and each one's person (0–39).
Templates = tuple[np.ndarray, np.ndarray]


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): where false rejects (genuine ≥ t) equal false accepts (impostor < t)."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    frr = np.array([(genuine >= t).mean() for t in thresholds])
    far = np.array([(impostor < t).mean() for t in thresholds])
    best = int(np.argmin(np.abs(frr - far)))
    return float((frr[best] + far[best]) / 2), float(thresholds[best])


def test_equal_error_rate_of_a_known_split() -> None:
    genuine = np.array([0.1, 0.2, 0.3, 0.7])
    impostor = np.array([0.5, 0.8, 0.9, 1.0])
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.25)
    assert 0.3 < threshold <= 0.8


@pytest.fixture(scope="module")
def orl_templates(stub: instant_pb2_grpc.InstantStub) -> Templates:
    paths = [ORL / f"s{person}" / f"{shot}.pgm" for person in range(1, 41) for shot in range(1, 11)]

    def extract(path: Path) -> np.ndarray:
        request = instant_pb2.TemplateRequest(image=common_pb2.Media(data=read(path)))
        return np.asarray(stub.ExtractTemplate(request, timeout=60).template.values, np.float32)

    with ThreadPoolExecutor(8) as pool:
        embeddings = np.stack(list(pool.map(extract, paths)))
    labels = np.repeat(np.arange(40), 10)
    return embeddings, labels


@pytest.mark.slow
def test_orl_every_image_yields_a_template(orl_templates: Templates) -> None:
    embeddings, _ = orl_templates
    assert embeddings.shape == (400, 128)
    assert np.all(np.isfinite(embeddings))


@pytest.mark.slow
def test_orl_verification_eer(orl_templates: Templates) -> None:
    embeddings, labels = orl_templates
    distances = np.linalg.norm(embeddings[:, None, :] - embeddings[None, :, :], axis=-1)
    upper_i, upper_j = np.triu_indices(len(labels), k=1)
    same = labels[upper_i] == labels[upper_j]
    genuine = distances[upper_i[same], upper_j[same]]
    impostor_all = distances[upper_i[~same], upper_j[~same]]
    rng = np.random.default_rng(SEED)
    impostor = rng.choice(impostor_all, size=IMPOSTOR_SAMPLE, replace=False)
    assert genuine.size == 40 * 45
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer <= 0.015, f"ORL EER {eer:.2%} at distance {threshold:.3f}"
    # At the served decision threshold (0.6), errors stay near MODELS.md's 0.9 % FRR / 2.0 % FAR.
    assert (genuine >= 0.6).mean() <= 0.02
    assert (impostor < 0.6).mean() <= 0.03


@pytest.mark.slow
def test_orl_rank1_identification(orl_templates: Templates) -> None:
    embeddings, labels = orl_templates
    distances = np.linalg.norm(embeddings[:, None, :] - embeddings[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = labels[np.argmin(distances, axis=1)]
    assert (nearest == labels).mean() >= 0.99


@pytest.mark.slow
def test_orl_server_distance_equals_local_distance(
    stub: instant_pb2_grpc.InstantStub, orl_templates: Templates
) -> None:
    embeddings, _ = orl_templates
    a, b = embeddings[0], embeddings[15]
    reply = stub.Verify(
        instant_pb2.VerifyRequest(
            a=instant_pb2.FaceInput(
                template=common_pb2.Template(values=a.tolist(), model="dlib-resnet")
            ),
            b=instant_pb2.FaceInput(
                template=common_pb2.Template(values=b.tolist(), model="dlib-resnet")
            ),
        )
    )
    assert reply.distance == pytest.approx(float(np.linalg.norm(a - b)), abs=1e-5)
