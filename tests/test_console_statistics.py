"""Statistics.GetStatistics on real analyses (the real models, real photos): counts per day,
type and resolution, the decline rate, the operator backlog, the median processing time,
company-scoped, and who may read them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import FACES, SPOOF, ServerThread, make_settings
from vigil.client import VigilClient
from vigil.v1 import auth_pb2, auth_pb2_grpc, folders_pb2, statistics_pb2, statistics_pb2_grpc

COMPANY = "stats-a"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def vigil(models_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    # a wide grey zone: obama against biden is a case for an operator
    settings: dict[str, object] = {"biometry_grey_zone": 5.0}
    if request.param == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_database")
    running = ServerThread(make_settings(models_dir, **settings)).start()
    yield running
    running.stop()


def report(vigil: ServerThread, key: str, **request: Timestamp) -> statistics_pb2.StatisticsReport:
    with vigil.channel(key) as channel:
        stub = statistics_pb2_grpc.StatisticsStub(channel)
        return stub.GetStatistics(statistics_pb2.GetStatisticsRequest(**request), timeout=30)


def test_statistics_count_the_company_analyses(vigil: ServerThread) -> None:
    key = vigil.new_key("CLIENT_ADMIN", company=COMPANY)
    with VigilClient(vigil.address, api_key=key, timeout=120) as client:
        live = client.submit([(FACES / "obama.jpg", ["photo_selfie"])], ["LIVENESS"])
        spoof = client.submit([(SPOOF / "image_F2.jpg", ["photo_selfie"])], ["LIVENESS"])
        pair = client.submit(
            [(FACES / "obama.jpg", ["photo_selfie"]), (FACES / "biden.jpg", ["photo_id_front"])],
            ["BIOMETRY"],
        )
        done = [client.wait(f.id, timeout=180) for f in (live, spoof, pair)]
    resolutions = [f.analyses[0].resolution for f in done]
    assert resolutions == [
        folders_pb2.RESOLUTION_SUCCESS,
        folders_pb2.RESOLUTION_DECLINED,
        folders_pb2.RESOLUTION_OPERATOR_REQUIRED,
    ]
    found = report(vigil, key)
    today = datetime.now(UTC).date().isoformat()
    counts = {(d.day, d.type, d.resolution): d.count for d in found.days}
    assert counts == {
        (today, folders_pb2.ANALYSIS_TYPE_LIVENESS, folders_pb2.RESOLUTION_SUCCESS): 1,
        (today, folders_pb2.ANALYSIS_TYPE_LIVENESS, folders_pb2.RESOLUTION_DECLINED): 1,
        (today, folders_pb2.ANALYSIS_TYPE_BIOMETRY, folders_pb2.RESOLUTION_OPERATOR_REQUIRED): 1,
    }
    assert (found.analyses, found.decided, found.operator_backlog) == (3, 3, 1)
    assert found.decline_rate == pytest.approx(1 / 3)
    times = sorted(f.analyses[0].processing_ms for f in done)
    assert found.median_processing_ms == pytest.approx(times[1], rel=1e-3) and times[1] > 0

    # an operator's decision empties the backlog and counts as a decision
    operator = vigil.new_key("CLIENT_OPERATOR", company=COMPANY)
    with vigil.channel(operator) as channel:
        auth_pb2_grpc.OperatorsStub(channel).ResolveAnalysis(
            auth_pb2.ResolveAnalysisRequest(
                analysis_id=done[2].analyses[0].id,
                resolution=folders_pb2.RESOLUTION_DECLINED,
                comment="not the same person",
            ),
            timeout=30,
        )
    after = report(vigil, operator)
    assert after.operator_backlog == 0 and after.decline_rate == pytest.approx(2 / 3)

    # another company's numbers are its own; a range without them is empty
    assert report(vigil, vigil.new_key("CLIENT_ADMIN", company="stats-b")).analyses == 0
    old = datetime.now(UTC) - timedelta(days=3)
    since, until = Timestamp(), Timestamp()
    since.FromDatetime(old - timedelta(days=1))
    until.FromDatetime(old)
    assert report(vigil, key, since=since, until=until).analyses == 0


def test_statistics_refuse_a_bad_range_and_a_plain_client(vigil: ServerThread) -> None:
    key = vigil.new_key("CLIENT_ADMIN", company=COMPANY)
    since, until = Timestamp(), Timestamp()
    since.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    until.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.RpcError) as backwards:
        report(vigil, key, since=since, until=until)
    assert backwards.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since must be before until" in (backwards.value.details() or "")
    since.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    until.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.RpcError) as too_long:
        report(vigil, key, since=since, until=until)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        report(vigil, vigil.new_key("CLIENT", company=COMPANY))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
