"""The accuracy gate: every CPU backend/precision ``auto`` may choose against ONNX Runtime fp32.

The same images run through an engine on each choice and on the reference: every live/spoof and
match/no-match decision on the samples (../shared/data faces and spoof) is the same, no embedding
moves more than 0.02 and no liveness score more than 0.02 on any sample, ORL included, and the
ORL verification EER stays within 0.1 percentage point. The choices are
:data:`vigil.inference.backends.AUTO_CHOICES` itself, so what fails here is not what ``auto`` may
serve unnoticed. Each engine runs the samples one at a time (a backend's ``alone``, all-threads
model) and all at once (its one-thread-per-call model), and both are held to the gate.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FACES, ORL, SPOOF, make_settings, read
from tests.test_accuracy_orl import equal_error_rate
from vigil.inference import cpu_features
from vigil.inference.backends import (
    AUTO_CHOICES,
    BACKENDS,
    REFERENCE,
    BackendOptions,
    Choice,
    candidates,
    load_models,
    native_precision,
    runs_here,
)
from vigil.inference.catalog import DEFAULT_MODELS, MINIFASNET_V2, YUNET, verify_installed
from vigil.inference.decisions import distance, is_live, is_match
from vigil.inference.engine import Engine
from vigil.inference.errors import ModelError
from vigil.server import metrics
from vigil.server.app import engine_config
from vigil.v1 import instant_pb2, instant_pb2_grpc

GATED = [choice for choice in AUTO_CHOICES if choice != REFERENCE]
SAMPLES = sorted(FACES.iterdir()) + sorted(SPOOF.iterdir())
ORL_IMAGES = [
    ORL / f"s{person}" / f"{shot}.pgm" for person in range(1, 41) for shot in range(1, 11)
]
MAX_EMBEDDING_SHIFT = 0.02
MAX_LIVENESS_SHIFT = 0.02
MAX_EER_SHIFT = 0.001


@dataclass
class Outputs:
    """Per image: the liveness score and the embedding of its largest face."""

    scores: np.ndarray
    embeddings: np.ndarray


class GateEngine:
    """An engine on one backend/precision, two threads per call (so both of a CPU backend's
    compiled models exist), run from a private event loop."""

    def __init__(self, models_dir: Path, choice: Choice) -> None:
        settings = make_settings(
            models_dir, backend=choice.backend, precision=choice.precision, intra_op_threads=2
        )
        self.engine = Engine(engine_config(settings))
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.engine.start())
        assert self.engine.running == choice

    def outputs(self, paths: list[Path], together: bool) -> Outputs:
        async def one(path: Path) -> tuple[float, np.ndarray]:
            data = read(path)
            _, score = await self.engine.liveness(data, admit=False)
            embedded = await self.engine.embed(data, admit=False)
            return score.score, embedded.embedding

        async def bounded(path: Path, turns: asyncio.Semaphore) -> tuple[float, np.ndarray]:
            async with turns:  # within the detector's queue (VIGIL_MAX_QUEUE_SIZE)
                return await one(path)

        async def run() -> list[tuple[float, np.ndarray]]:
            if together:
                turns = asyncio.Semaphore(16)
                return list(await asyncio.gather(*(bounded(path, turns) for path in paths)))
            return [await one(path) for path in paths]

        rows = self.loop.run_until_complete(run())
        return Outputs(np.array([score for score, _ in rows]), np.stack([emb for _, emb in rows]))

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def engines(models_dir: Path) -> Iterator[dict[Choice, GateEngine]]:
    started: dict[Choice, GateEngine] = {}
    try:
        for choice in [REFERENCE, *GATED]:
            if runs_here(choice):
                started[choice] = GateEngine(models_dir, choice)
        yield started
    finally:
        for engine in started.values():
            engine.close()


def _engine_for(engines: dict[Choice, GateEngine], choice: Choice) -> GateEngine:
    if choice not in engines:
        pytest.skip(f"{choice} does not run on this CPU ({cpu_features.detect().model_name})")
    return engines[choice]


def _assert_within_gate(reference: Outputs, candidate: Outputs, names: list[str]) -> None:
    moved = np.linalg.norm(candidate.embeddings - reference.embeddings, axis=1)
    worst = int(np.argmax(moved))
    assert moved[worst] <= MAX_EMBEDDING_SHIFT, (
        f"{names[worst]}: embedding moved {moved[worst]:.4f}"
    )
    shift = np.abs(candidate.scores - reference.scores)
    worst = int(np.argmax(shift))
    assert shift[worst] <= MAX_LIVENESS_SHIFT, f"{names[worst]}: liveness moved {shift[worst]:.4f}"


@pytest.mark.parametrize("together", [False, True], ids=["alone", "together"])
@pytest.mark.parametrize("choice", GATED, ids=str)
def test_samples_decide_the_same_and_move_little(
    engines: dict[Choice, GateEngine], choice: Choice, together: bool
) -> None:
    candidate_engine = _engine_for(engines, choice)
    reference = engines[REFERENCE].outputs(SAMPLES, together=False)
    candidate = candidate_engine.outputs(SAMPLES, together=together)
    names = [path.name for path in SAMPLES]
    thresholds = candidate_engine.engine.config.thresholds
    for name, ref_score, score in zip(names, reference.scores, candidate.scores, strict=True):
        assert is_live(score, thresholds.liveness) == is_live(ref_score, thresholds.liveness), (
            f"{name}: live decision changed ({ref_score:.4f} → {score:.4f})"
        )
    for i, j in itertools.combinations(range(len(names)), 2):
        ref_apart = distance(reference.embeddings[i], reference.embeddings[j])
        apart = distance(candidate.embeddings[i], candidate.embeddings[j])
        assert is_match(apart, thresholds.match_distance) == is_match(
            ref_apart, thresholds.match_distance
        ), f"{names[i]} vs {names[j]}: match decision changed ({ref_apart:.4f} → {apart:.4f})"
    _assert_within_gate(reference, candidate, names)


def _eer(embeddings: np.ndarray) -> float:
    labels = np.repeat(np.arange(40), 10)
    distances = np.linalg.norm(embeddings[:, None, :] - embeddings[None, :, :], axis=-1)
    upper_i, upper_j = np.triu_indices(len(labels), k=1)
    same = labels[upper_i] == labels[upper_j]
    # Every impostor pair (not a sample): the gate compares two EERs, so both see the same pairs.
    eer, _ = equal_error_rate(
        distances[upper_i[same], upper_j[same]], distances[upper_i[~same], upper_j[~same]]
    )
    return eer


@pytest.mark.slow
@pytest.mark.parametrize("choice", GATED, ids=str)
def test_orl_eer_and_every_orl_image_within_the_gate(
    engines: dict[Choice, GateEngine], choice: Choice
) -> None:
    candidate_engine = _engine_for(engines, choice)
    reference = engines[REFERENCE].outputs(ORL_IMAGES, together=True)
    candidate = candidate_engine.outputs(ORL_IMAGES, together=True)
    _assert_within_gate(reference, candidate, [f"{p.parent.name}/{p.name}" for p in ORL_IMAGES])
    reference_eer, eer = _eer(reference.embeddings), _eer(candidate.embeddings)
    assert abs(eer - reference_eer) <= MAX_EER_SHIFT, (
        f"ORL EER {eer:.3%} on {choice}, {reference_eer:.3%} on {REFERENCE}"
    )
    assert eer <= 0.015


# ---- what auto chooses, and what a server says it runs -------------------------------------------


def test_auto_prefers_native_bf16_and_falls_back_to_onnxruntime() -> None:
    found = candidates("auto", "auto")
    assert found[-1] == REFERENCE or found[-1] == Choice("openvino", "fp32")
    assert REFERENCE in found
    if runs_here(Choice("openvino", "bf16")):
        assert found[0] == Choice("openvino", "bf16")
        assert native_precision("openvino") == "bf16"
    else:
        assert found[0] == REFERENCE
        assert native_precision("openvino") == "fp32"
    # fp32 forced: what a CPU without bf16 runs.
    assert candidates("auto", "fp32")[0] == REFERENCE
    assert all(choice.precision == "fp32" for choice in candidates("auto", "fp32"))


def test_named_backends_keep_their_meaning_and_refuse_what_they_cannot_run() -> None:
    assert candidates("onnxruntime", "auto") == [REFERENCE]
    assert candidates("openvino", "fp32") == [Choice("openvino", "fp32")]
    assert candidates("tensorrt", "auto") == [Choice("tensorrt", "fp32")]
    with pytest.raises(ModelError, match="runs precision fp32, not 'bf16'"):
        candidates("onnxruntime", "bf16")
    with pytest.raises(ModelError, match="unknown backend 'cuda'"):
        candidates("cuda", "auto")


def test_bf16_refused_on_a_cpu_without_it(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    without = cpu_features.CpuFeatures("old CPU", frozenset({"avx2", "avx512f"}), ("BF16", "FP32"))
    assert not without.native_bf16  # the flags decide where /proc/cpuinfo has them
    monkeypatch.setattr(cpu_features, "detect", lambda: without)
    with pytest.raises(ModelError, match="no CPU backend runs precision 'bf16'"):
        candidates("auto", "bf16")
    assert candidates("auto", "auto")[0] == REFERENCE
    paths = verify_installed(models_dir, DEFAULT_MODELS)
    with pytest.raises(ModelError, match=r"needs a CPU with native bf16.*old CPU"):
        BACKENDS["openvino"]().load(
            MINIFASNET_V2, paths[MINIFASNET_V2.name], BackendOptions(precision="bf16")
        )


def test_cpuinfo_flags_read() -> None:
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    model_name, flags = cpu_features.parse_cpuinfo(text)
    assert model_name == "AMD EPYC 9R14"
    assert {"avx2", "avx512_bf16"} <= flags
    assert cpu_features.CpuFeatures(model_name, flags, ()).native_bf16


def test_auto_falls_back_to_onnxruntime_when_openvino_fails(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> object:
        raise ModelError("OpenVINO is broken here")

    monkeypatch.setitem(BACKENDS, "openvino", broken)
    paths = verify_installed(models_dir, DEFAULT_MODELS)
    with caplog.at_level(logging.WARNING, "vigil.inference.backends"):
        loaded = load_models("auto", BackendOptions(precision="auto"), DEFAULT_MODELS, paths)
    try:
        assert loaded.choice == REFERENCE
        assert set(loaded.models) == {spec.name for spec in DEFAULT_MODELS}
    finally:
        for model in loaded.models.values():
            model.unload()
    if runs_here(Choice("openvino", "bf16")):
        assert "OpenVINO is broken here" in caplog.text
        assert "falling back to onnxruntime fp32" in caplog.text
    with pytest.raises(ModelError, match="OpenVINO is broken here"):
        load_models("openvino", BackendOptions(), DEFAULT_MODELS, paths)  # by name: no fallback


def test_server_says_what_runs(stub: instant_pb2_grpc.InstantStub) -> None:
    expected = candidates("auto", "auto")[0]
    info = stub.GetServerInfo(instant_pb2.GetServerInfoRequest())
    assert (info.backend, info.precision) == (expected.backend, expected.precision)
    labels = [
        sample.labels
        for family in metrics.BACKEND_INFO.collect()
        for sample in family.samples
        if sample.value == 1
    ]
    assert labels == [{"backend": expected.backend, "precision": expected.precision}]


@pytest.mark.parametrize("side", [(480, 640), (320, 256)], ids=["640x480", "256x320"])
def test_openvino_runs_yunet_at_any_size_like_onnxruntime(
    models_dir: Path, side: tuple[int, int]
) -> None:
    """The OpenVINO backend runs YuNet too (the engine keeps it on ONNX Runtime, ``ON_REFERENCE``):
    its dynamic H/W and its outputs' names (OpenVINO may call ``cls_8`` ``291``) match ONNX
    Runtime's, in f32, at two sizes from one compiled model."""
    paths = verify_installed(models_dir, DEFAULT_MODELS)
    options = BackendOptions(precision="fp32", intra_op_threads=2)
    openvino = BACKENDS["openvino"]().load(YUNET, paths[YUNET.name], options)
    reference = BACKENDS["onnxruntime"]().load(YUNET, paths[YUNET.name], options)
    image = np.random.default_rng(7).uniform(0, 255, (1, 3, *side)).astype(np.float32)
    for alone in (True, False):
        got = openvino.infer({"input": image}, alone=alone)
        expected = reference.infer({"input": image}, alone=alone)
        assert set(got) == {tensor.name for tensor in YUNET.outputs} == set(expected)
        for name, values in expected.items():
            np.testing.assert_allclose(got[name], values, rtol=1e-3, atol=1e-3, err_msg=name)
