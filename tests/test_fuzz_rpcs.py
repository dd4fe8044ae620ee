"""Property-based fuzzing (Hypothesis) of every RPC of every vigil service, on SQLite and
PostgreSQL.

The methods are read from the descriptors of the ``vigil.v1`` modules, so a new RPC is fuzzed
without a change here. Each example is a request (a stream of them for client-streaming RPCs)
built field by field from the message's descriptor (strings with NUL and oversized ones, every
integer width, NaN and infinities, unknown enum numbers, real object ids, a real face image), or
raw random bytes. It is sent as bytes, as an ADMIN acting in a company of the test's own, and:

- the status is never INTERNAL, UNKNOWN or UNAVAILABLE (each bad input gets a precise one);
- the server keeps serving (GetServerInfo answers after every example);
- nothing is half-written: after each RPC's examples every folder's ``analyses_count`` equals its
  analysis rows, every media and analysis has its folder, and the metadata index equals each
  folder's metadata.

Examples per RPC: ``VIGIL_FUZZ_EXAMPLES`` (default 25, the CI profile); derandomized so a CI
failure reproduces, ``VIGIL_FUZZ_SEED`` for another sequence.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, select

import vigil.v1
from tests.conftest import FACES, POSTGRES_ADMIN_URL, ServerThread, make_settings
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc, instant_pb2, instant_pb2_grpc

EXAMPLES = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("VIGIL_FUZZ_SEED")
settings.register_profile(
    "vigil-fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=SEED is None,
    suppress_health_check=list(HealthCheck),
)
#: Statuses that say the server failed rather than refused.
FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
CALL_TIMEOUT_S = 30.0


def vigil_methods() -> list[tuple[str, MethodDescriptor]]:
    """Every RPC of every service defined in vigil.v1, as (path, descriptor)."""
    found: dict[str, MethodDescriptor] = {}
    for info in pkgutil.iter_modules(vigil.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"vigil.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method
    return sorted(found.items())


METHODS = vigil_methods()


def small_face() -> bytes:
    image = cv2.imread(str(FACES / "obama.jpg"))
    assert image is not None
    ok, data = cv2.imencode(".jpg", cv2.resize(image, (240, 300)))
    assert ok
    return data.tobytes()


# ---- requests from descriptors -------------------------------------------------------------

_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 4


class Requests:
    """Strategies of request messages, from their descriptors, with the ids of real objects.

    A message is hostile (any value: NUL, 5,000 characters, NaN, 2^63, unknown enums, random
    bytes) or plausible (real ids, short names, valid enums, small numbers, the real image), so
    that examples also get past the first check to the paths behind it.
    """

    def __init__(self, ids: list[str], image: bytes) -> None:
        plain = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.@", min_size=1, max_size=16)
        text = st.text(st.characters(codec="utf-8"), max_size=24)
        edge = st.sampled_from(["", "\x00", "id\x00", "x" * 5000, "é" * 300, "../../etc"])
        real = st.sampled_from(ids)
        self.plausible_strings = st.one_of(real, real, real, plain)
        self.strings = st.one_of(real, plain, text, edge)
        self.image = st.just(image)
        self.bytes = st.one_of(self.image, st.binary(max_size=64))
        self.floats = st.one_of(st.floats(0, 1), st.floats(width=32))

    def scalar(self, field: FieldDescriptor, plausible: bool) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == _T.TYPE_STRING:
            return self.plausible_strings if plausible else self.strings
        if kind == _T.TYPE_BYTES:
            return self.image if plausible else self.bytes
        if kind == _T.TYPE_BOOL:
            return st.booleans()
        if kind in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
            return st.floats(0.05, 1.0) if plausible else st.one_of(self.floats, st.floats())
        if kind == _T.TYPE_ENUM:
            assert field.enum_type is not None
            numbers = [v.number for v in field.enum_type.values]
            return st.sampled_from(numbers if plausible else [*numbers, -1, 99])
        low, high = _INT_RANGES[kind]
        small = st.integers(max(low, 0), min(high, 50))
        return small if plausible else st.one_of(small, st.integers(low, high))

    @cache  # noqa: B019 (one instance per test, a handful of descriptors)
    def message(
        self, descriptor: Descriptor, plausible: bool, depth: int = 0
    ) -> st.SearchStrategy[Message]:
        return st.composite(lambda draw: self._build(draw, descriptor, plausible, depth))()

    def _value(self, field: FieldDescriptor, plausible: bool, depth: int) -> st.SearchStrategy[Any]:
        if field.type == _T.TYPE_MESSAGE:
            return self.message(field.message_type, plausible, depth + 1)
        return self.scalar(field, plausible)

    def _build(
        self, draw: st.DrawFn, descriptor: Descriptor, plausible: bool, depth: int
    ) -> Message:
        message = GetMessageClass(descriptor)()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            is_message = field.type == _T.TYPE_MESSAGE
            if is_message and depth >= MAX_DEPTH:
                continue
            target = getattr(message, field.name)
            entry = field.message_type
            if is_message and entry is not None and entry.GetOptions().map_entry:
                key_field = entry.fields_by_name["key"]
                value_field = entry.fields_by_name["value"]
                entries = draw(
                    st.lists(
                        st.tuples(
                            self.scalar(key_field, plausible),
                            self._value(value_field, plausible, depth),
                        ),
                        max_size=4,
                    )
                )
                for key, value in entries:
                    if value_field.type == _T.TYPE_MESSAGE:
                        target[key].CopyFrom(value)
                    else:
                        target[key] = value
            elif field.is_repeated:
                values = draw(st.lists(self._value(field, plausible, depth), max_size=4))
                for value in values:
                    if is_message:
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
            elif is_message:
                target.CopyFrom(draw(self.message(field.message_type, plausible, depth + 1)))
            else:
                setattr(message, field.name, draw(self.scalar(field, plausible)))
        return message

    def payloads(self, method: MethodDescriptor) -> st.SearchStrategy[bytes]:
        hostile = self.message(method.input_type, False).map(lambda m: m.SerializeToString())
        plausible = self.message(method.input_type, True).map(lambda m: m.SerializeToString())
        return st.one_of(plausible, hostile, st.binary(max_size=256))


# ---- the calls -----------------------------------------------------------------------------


def call(
    channel: grpc.Channel, path: str, method: MethodDescriptor, payloads: list[bytes], md: Any
) -> grpc.StatusCode:
    """Send the payloads as ``method`` (bytes in, bytes out); the status it ended with."""
    raw: Any = channel  # grpc's stubs type the multi-callables by their messages; these are bytes
    try:
        if method.client_streaming and method.server_streaming:
            list(raw.stream_stream(path)(iter(payloads), timeout=CALL_TIMEOUT_S, metadata=md))
        elif method.client_streaming:
            raw.stream_unary(path)(iter(payloads), timeout=CALL_TIMEOUT_S, metadata=md)
        elif method.server_streaming:
            list(raw.unary_stream(path)(payloads[0], timeout=CALL_TIMEOUT_S, metadata=md))
        else:
            raw.unary_unary(path)(payloads[0], timeout=CALL_TIMEOUT_S, metadata=md)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        assert code not in FAILURES, f"{path}: {code} {exc.details()!r}"
        return code
    return grpc.StatusCode.OK


def half_written(server: ServerThread, company: str) -> list[str]:
    """What is inconsistent in the company's folders, media, analyses and metadata index."""
    from vigil.storage.tables import Analysis, Folder, FolderMeta, Media

    def work(session: Session) -> list[str]:
        problems: list[str] = []
        folders = {
            f.id: f for f in session.exec(select(Folder).where(Folder.company_id == company))
        }
        rows = list(session.exec(select(Analysis).where(Analysis.company_id == company)))
        media = list(session.exec(select(Media).where(Media.company_id == company)))
        meta = list(session.exec(select(FolderMeta).where(col(FolderMeta.company_id) == company)))
        for folder in folders.values():
            count = sum(1 for a in rows if a.folder_id == folder.id)
            if folder.analyses_count != count:
                problems.append(f"folder {folder.id}: analyses_count {folder.analyses_count}")
            indexed = {m.key: m.value for m in meta if m.folder_id == folder.id}
            if indexed != dict(folder.meta):
                problems.append(f"folder {folder.id}: metadata index {indexed} != {folder.meta}")
        problems += [f"analysis {a.id} without folder" for a in rows if a.folder_id not in folders]
        problems += [f"media {m.id} without folder" for m in media if m.folder_id not in folders]
        return problems

    app = server.vigil.app
    return server.call(lambda: app.db(work))


# ---- the servers ---------------------------------------------------------------------------


def _postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc})")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(
    request: pytest.FixtureRequest, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A server of the fuzz test's own on each database (what fuzzing writes stays there)."""
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        _postgres_or_skip()
        overrides["database_url"] = request.getfixturevalue("postgres_database")
    data_dir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    running = ServerThread(
        make_settings(models_dir, data_dir=data_dir, webhook_allow_private=False, **overrides)
    ).start()
    yield running
    running.stop()


@pytest.fixture
def world(fuzzed: ServerThread) -> tuple[str, list[str]]:
    """A company of each RPC's own with a folder, a media and an analysis (their ids seed the
    strings; an RPC that deletes them leaves the next one its own)."""
    company = f"fuzz-{uuid.uuid4().hex[:12]}"
    fuzzed.ensure_company(company)
    md = (("vigil-company", company),)
    with fuzzed.channel() as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        folder = stub.CreateFolder(fp.CreateFolderRequest(meta={"k": "v"}), metadata=md)

        def parts() -> Iterator[fp.UploadMediaRequest]:
            yield fp.UploadMediaRequest(
                header=fp.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
            )
            yield fp.UploadMediaRequest(chunk=small_face())

        media = stub.UploadMedia(parts(), metadata=md)
        analysis = stub.CreateAnalyses(
            fp.CreateAnalysesRequest(
                folder_id=folder.id, analyses=[fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)]
            ),
            metadata=md,
        ).analyses[0]
    return company, [folder.id, media.id, analysis.id, company]


@pytest.mark.parametrize("path", [path for path, _ in METHODS])
def test_every_rpc_survives_hostile_requests(
    path: str, fuzzed: ServerThread, world: tuple[str, list[str]]
) -> None:
    method = dict(METHODS)[path]
    company, ids = world
    md = (("vigil-company", company),)
    requests = Requests(ids, small_face())
    one = requests.payloads(method)
    payloads = (
        st.lists(one, min_size=1, max_size=4)
        if method.client_streaming
        else st.lists(one, min_size=1, max_size=1)
    )
    seen: dict[grpc.StatusCode, int] = {}
    started = time.perf_counter()
    with fuzzed.channel() as channel:
        info = instant_pb2_grpc.InstantStub(channel).GetServerInfo

        @settings(settings.get_profile("vigil-fuzz"))
        @given(payloads)
        def example(sent: list[bytes]) -> None:
            code = call(channel, path, method, sent, md)
            seen[code] = seen.get(code, 0) + 1
            assert info(instant_pb2.GetServerInfoRequest(), timeout=10).version

        run: Callable[[], None] = seed(int(SEED))(example) if SEED else example
        run()
    elapsed = time.perf_counter() - started
    assert sum(seen.values()) >= min(EXAMPLES, 1)
    assert half_written(fuzzed, company) == []
    statuses = ", ".join(f"{c.name} {n}" for c, n in sorted(seen.items(), key=lambda i: -i[1]))
    print(f"\nfuzz {path}: {sum(seen.values())} examples in {elapsed:.1f} s ({statuses})")
