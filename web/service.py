"""The adapter's calls to vigil: a small private wrapper over the client SDK's connection (the SDK
has no folder or challenge calls yet), asyncio, every call with the adapter's credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.v1 import (
    challenges_pb2,
    challenges_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    video_pb2,
)

T = TypeVar("T")
UPLOAD_CHUNK = 256 * 1024
#: Oz's tag of a liveness video without a gesture.
PASSIVE_TAG = "video_selfie_blank"
GESTURE_NAMES = {
    challenges_pb2.GESTURE_BLINK: "blink",
    challenges_pb2.GESTURE_SMILE: "smile",
    challenges_pb2.GESTURE_TURN_LEFT: "turn_left",
    challenges_pb2.GESTURE_TURN_RIGHT: "turn_right",
    challenges_pb2.GESTURE_TILT_UP: "tilt_up",
    challenges_pb2.GESTURE_TILT_DOWN: "tilt_down",
    challenges_pb2.GESTURE_MOVE_CLOSER: "move_closer",
}
GESTURES_BY_NAME = {name: value for value, name in GESTURE_NAMES.items()}


@dataclass(frozen=True)
class Capture:
    """What the plugin says about the capture (all of it untrusted, checked by the service)."""

    camera_label: str = ""
    device: str = ""
    timestamps_ms: list[float] = field(default_factory=list)


def as_dict(message: Message) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)


def capture_info(capture: Capture) -> video_pb2.CaptureInfo:
    return video_pb2.CaptureInfo(
        camera_label=capture.camera_label,
        device=capture.device,
        frame_timestamps_ms=capture.timestamps_ms,
    )


class AnalysisTimeout(Exception):
    """The analysis was not final within the adapter's wait (it goes on in the service)."""


class VigilService:
    def __init__(self, connection: Connection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._metadata = connection.metadata
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """Made on first use: an asyncio channel belongs to the loop that runs the app."""
        if self._channel is None:
            self._channel = self.connection.aio_channel()
        return self._channel

    @property
    def _folders(self) -> folders_pb2_grpc.FoldersAsyncStub:
        return folders_pb2_grpc.FoldersStub(self.channel)

    @property
    def _challenges(self) -> challenges_pb2_grpc.ChallengesAsyncStub:
        return challenges_pb2_grpc.ChallengesStub(self.channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    async def create_folder(self, meta: dict[str, str]) -> str:
        request = folders_pb2.CreateFolderRequest(meta=meta)
        folder = await self._call(
            self._folders.CreateFolder(request, timeout=self.timeout, metadata=self._metadata)
        )
        return folder.id

    async def create_challenge(self, gestures: list[str], count: int) -> challenges_pb2.Challenge:
        request = challenges_pb2.CreateChallengeRequest(
            allowed=[GESTURES_BY_NAME[g] for g in gestures], count=count
        )
        return await self._call(
            self._challenges.CreateChallenge(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def answer_challenge(
        self, challenge_id: str, video: bytes, capture: Capture
    ) -> challenges_pb2.ChallengeVerdict:
        request = challenges_pb2.AnswerChallengeRequest(
            challenge_id=challenge_id,
            video=common_pb2.Media(data=video),
            capture=capture_info(capture),
        )
        return await self._call(
            self._challenges.AnswerChallenge(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def upload(
        self,
        folder_id: str,
        video: bytes,
        tags: list[str],
        meta: dict[str, str],
        content_type: str,
        capture: Capture,
    ) -> str:
        """The video into the folder with its capture metadata (kept by the service for the
        LIVENESS analysis' virtual-camera and timing signals)."""

        async def parts() -> AsyncIterator[folders_pb2.UploadMediaRequest]:
            header = folders_pb2.UploadMediaHeader(
                folder_id=folder_id,
                tags=tags,
                meta=meta,
                content_type=content_type,
                capture=capture_info(capture),
            )
            yield folders_pb2.UploadMediaRequest(header=header)
            for start in range(0, len(video), UPLOAD_CHUNK):
                yield folders_pb2.UploadMediaRequest(chunk=video[start : start + UPLOAD_CHUNK])

        media = await self._call(
            self._folders.UploadMedia(parts(), timeout=self.timeout, metadata=self._metadata)
        )
        return media.id

    async def liveness(self, folder_id: str, wait_s: float) -> folders_pb2.Analysis:
        """A LIVENESS analysis of the folder, final: polled until it is FINISHED or FAILED,
        for at most ``wait_s`` (then :class:`AnalysisTimeout`)."""
        request = folders_pb2.CreateAnalysesRequest(
            folder_id=folder_id,
            analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)],
        )
        created = await self._call(
            self._folders.CreateAnalyses(request, timeout=self.timeout, metadata=self._metadata)
        )
        analysis_id = created.analyses[0].id
        give_up = time.monotonic() + wait_s
        pause = 0.1
        while True:
            analysis = await self._call(
                self._folders.GetAnalysis(
                    folders_pb2.GetAnalysisRequest(analysis_id=analysis_id),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            )
            if analysis.state != folders_pb2.ANALYSIS_STATE_PROCESSING:
                return analysis
            if time.monotonic() + pause > give_up:
                raise AnalysisTimeout(analysis_id)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 1.0)

    async def get_challenge(self, challenge_id: str) -> challenges_pb2.Challenge:
        """The challenge with its resolution once answered (an active session's result)."""
        request = challenges_pb2.GetChallengeRequest(challenge_id=challenge_id)
        return await self._call(
            self._challenges.GetChallenge(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def set_meta(self, folder_id: str, values: dict[str, str]) -> None:
        request = folders_pb2.UpdateFolderMetaRequest(folder_id=folder_id, set=values)
        await self._call(
            self._folders.UpdateFolderMeta(request, timeout=self.timeout, metadata=self._metadata)
        )

    async def find_folder(
        self, transaction_id: str, within: timedelta = timedelta(hours=1)
    ) -> folders_pb2.Folder | None:
        """The newest folder with this ``transaction_id`` created within ``within`` (the lookup
        Oz's security recommendations ask of a backend), with its media and analyses."""
        request = folders_pb2.ListFoldersRequest(
            meta=[
                folders_pb2.MetaFilter(
                    key="transaction_id", op=folders_pb2.MetaFilter.OP_EQ, value=transaction_id
                )
            ],
            page_size=1,
            with_details=True,
        )
        request.created_after.FromDatetime(datetime.now(UTC) - within)
        found = await self._call(
            self._folders.ListFolders(request, timeout=self.timeout, metadata=self._metadata)
        )
        return found.folders[0] if found.folders else None
