"""The Statistics API: a company's analyses per day by type and resolution, the decline rate,
the operator backlog and the median processing time (the operator console's page)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vigil.inference.errors import InvalidArgument
from vigil.server.api.converters import moment, stamp
from vigil.server.context import AppContext
from vigil.server.rpc import Context
from vigil.server.security.principal import acting_company
from vigil.storage import statistics
from vigil.v1 import folders_pb2, statistics_pb2, statistics_pb2_grpc

DEFAULT_RANGE = timedelta(days=30)
MAX_RANGE = timedelta(days=366)


class StatisticsServicer(statistics_pb2_grpc.StatisticsServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app

    async def GetStatistics(
        self, request: statistics_pb2.GetStatisticsRequest, context: Context
    ) -> statistics_pb2.StatisticsReport:
        company_id = acting_company()
        until = moment(request.until, request.HasField("until")) or datetime.now(UTC)
        since = moment(request.since, request.HasField("since")) or until - DEFAULT_RANGE
        if since >= until:
            raise InvalidArgument("since must be before until")
        if until - since > MAX_RANGE:
            raise InvalidArgument("the range is at most 366 days")
        found = await self.app.db(
            lambda s: statistics.statistics(since, until, company_id=company_id, session=s)
        )
        return statistics_pb2.StatisticsReport(
            since=stamp(since),
            until=stamp(until),
            days=[
                statistics_pb2.DailyCount(
                    day=day,
                    type=folders_pb2.AnalysisType.Value(f"ANALYSIS_TYPE_{kind}"),
                    resolution=folders_pb2.Resolution.Value(
                        f"RESOLUTION_{resolution or 'UNSPECIFIED'}"
                    ),
                    count=count,
                )
                for day, kind, resolution, count in found.days
            ],
            analyses=found.analyses,
            decided=found.decided,
            decline_rate=found.declined / found.decided if found.decided else 0.0,
            operator_backlog=found.operator_backlog,
            median_processing_ms=found.median_processing_ms,
        )
