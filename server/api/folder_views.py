"""Read-side views shared by the Folders API and Submit: a folder with details, and its watch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlmodel import Session

from vigil.server.api import folders_converters as conv
from vigil.server.context import AppContext
from vigil.storage import analyses, folders
from vigil.storage.results import FINAL_STATES
from vigil.storage.tables import Analysis
from vigil.v1 import folders_pb2

#: How often a watch looks at the database (several replicas share it, so it polls).
WATCH_POLL_S = 0.2


def folder_details(folder_id: str, company: str, session: Session) -> folders_pb2.Folder:
    folder = folders.get_folder(folder_id, company_id=company, session=session)
    media = folders.folder_media(folder.id, company_id=company, session=session)
    rows = analyses.folder_analyses(folder.id, company_id=company, session=session)
    return conv.folder_message(folder, media, rows)


async def watch(
    app: AppContext, folder_id: str, company: str
) -> AsyncIterator[folders_pb2.FolderEvent]:
    """Events for each analysis state change until all are final (polls the shared database)."""

    def snapshot(session: Session) -> tuple[str | None, list[Analysis]]:
        folder = folders.get_folder(folder_id, company_id=company, session=session)
        return folder.resolution, analyses.folder_analyses(
            folder_id, company_id=company, session=session
        )

    seen: dict[str, tuple[str, str | None]] = {}
    while True:
        resolution, rows = await app.db(snapshot)
        changed = [a for a in rows if seen.get(a.id) != (a.state, a.resolution)]
        final = all(a.state in FINAL_STATES for a in rows)
        folder_resolution = conv.resolution_value(resolution)
        if not rows:
            yield folders_pb2.FolderEvent(folder_resolution=folder_resolution, final=True)
            return
        for index, row in enumerate(changed):
            seen[row.id] = (row.state, row.resolution)
            yield folders_pb2.FolderEvent(
                analysis=conv.analysis_message(row),
                folder_resolution=folder_resolution,
                final=final and index == len(changed) - 1,
            )
        if final:
            return
        await asyncio.sleep(WATCH_POLL_S)
