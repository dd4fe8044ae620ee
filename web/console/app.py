"""The console's routes (mounted at ``/console`` by the web app).

Sign-in: ``Auth.Login`` gives the person's access and refresh tokens, kept in HttpOnly,
SameSite=Strict cookies (Secure, except over plain http to a loopback address, where a browser
would drop them: the tests). Every call to the service carries the person's access token, so the
service decides what each person may see and do; an expired access token is refreshed once with
``Auth.Refresh``. Every POST carries a CSRF token in a hidden field that must equal the
HttpOnly ``vigil_console_csrf`` cookie (compared in constant time); a cross-site page can neither
read the cookie nor, with SameSite=Strict, send it.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import TypeVar
from urllib.parse import quote, urlencode

from starlette.datastructures import UploadFile
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil.client.errors import VigilRpcError
from vigil.v1 import auth_pb2, collections_pb2, folders_pb2
from vigil.web.console import admin, pages
from vigil.web.console.client import ConsoleClient, WatchListCalls, statistics

#: Like the adapter's, but its forms post to the console itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
ACCESS, REFRESH, CSRF = "vigil_console_access", "vigil_console_refresh", "vigil_console_csrf"
PAGE_SIZE = 25
#: Uploads: photos per added person, bytes per photo.
MAX_PHOTOS, MAX_PHOTO_BYTES = 8, 10 * 1024 * 1024
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
T = TypeVar("T")
HTTP_STATUS = {
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 409,
}


class SignedOut(Exception):
    """No valid token: the person signs in (again)."""


def _secure(request: Request) -> bool:
    """Secure cookies, except over plain http to a loopback host (tests, a local console)."""
    if request.url.scheme == "https":
        return True
    host = request.url.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def _set(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )


def _seconds_until(stamp: object) -> int:
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]
    return max(1, int((moment - datetime.now(UTC)).total_seconds()))


class Console:
    def __init__(self, client: ConsoleClient) -> None:
        self.client = client

    # ---- tokens ------------------------------------------------------------------------------

    def _store(self, response: Response, request: Request, pair: auth_pb2.TokenPair) -> None:
        _set(response, request, ACCESS, pair.access_token, _seconds_until(pair.access_expires_at))
        _set(
            response, request, REFRESH, pair.refresh_token, _seconds_until(pair.refresh_expires_at)
        )

    async def as_person(
        self,
        request: Request,
        refreshed: list[auth_pb2.TokenPair],
        work: Callable[[str], Awaitable[T]],
    ) -> T:
        """``work(token)`` with the person's access token, refreshed once if it has expired."""
        token = request.cookies.get(ACCESS, "")
        if token:
            try:
                return await work(token)
            except VigilRpcError as error:
                if error.code != "UNAUTHENTICATED":
                    raise
        refresh = request.cookies.get(REFRESH, "")
        if not refresh:
            raise SignedOut
        try:
            pair = await self.client.refresh(refresh)
        except VigilRpcError as error:
            raise SignedOut from error
        refreshed.append(pair)
        return await work(pair.access_token)

    def csrf_of(self, request: Request) -> str:
        return request.cookies.get(CSRF, "")

    def finish(
        self, response: Response, request: Request, refreshed: list[auth_pb2.TokenPair]
    ) -> Response:
        for pair in refreshed:
            self._store(response, request, pair)
        return response

    async def checked_form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form, or 403 when its CSRF token is not this browser's."""
        found = await self._checked_upload(request, max_files=0)
        return found if isinstance(found, Response) else found[0]

    async def _checked_upload(
        self, request: Request, max_files: int
    ) -> tuple[dict[str, str], list[tuple[bytes, str]]] | Response:
        """The POSTed fields and files (bytes, content type), or 403 for a wrong CSRF token,
        413 for a file over MAX_PHOTO_BYTES."""
        files: list[tuple[bytes, str]] = []
        async with request.form(
            max_files=max_files, max_fields=16, max_part_size=MAX_PHOTO_BYTES
        ) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            for _, value in form.multi_items():
                if isinstance(value, UploadFile) and value.filename:
                    data = await value.read(MAX_PHOTO_BYTES + 1)
                    if len(data) > MAX_PHOTO_BYTES:
                        return HTMLResponse(
                            pages.error(None, "", "Too large", "a photo is at most 10 MiB"),
                            status_code=413,
                        )
                    files.append((data, value.content_type or ""))
        expected = self.csrf_of(request)
        given = fields.get("csrf", "")
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return HTMLResponse(
                pages.error(None, "", "Refused", "The form's CSRF token is missing or wrong."),
                status_code=403,
            )
        return fields, files

    def failed(self, error: VigilRpcError, request: Request) -> HTMLResponse:
        return self._failed(error, None, self.csrf_of(request))

    def _failed(
        self, error: VigilRpcError, who: auth_pb2.Principal | None, csrf: str
    ) -> HTMLResponse:
        status = HTTP_STATUS.get(error.code, 502)
        message = error.message if status != 502 else "the service failed; try again"
        return HTMLResponse(pages.error(who, csrf, f"Error {status}", message), status_code=status)

    # ---- sign-in -----------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        csrf = self.csrf_of(request) or secrets.token_urlsafe(32)
        response = HTMLResponse(pages.login(csrf))
        _set(response, request, CSRF, csrf, 12 * 3600)
        return response

    async def login(self, request: Request) -> Response:
        fields = await self.checked_form(request)
        if isinstance(fields, Response):
            return fields
        try:
            pair = await self.client.login(fields.get("email", ""), fields.get("password", ""))
        except VigilRpcError as error:
            message = (
                "Wrong email or password."
                if error.code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT")
                else f"The service refused: {error.message}"
            )
            return HTMLResponse(pages.login(self.csrf_of(request), message), status_code=401)
        response = RedirectResponse("/console/", status_code=303)
        self._store(response, request, pair)
        # a new CSRF token for the signed-in session
        _set(response, request, CSRF, secrets.token_urlsafe(32), 12 * 3600)
        return response

    async def logout(self, request: Request) -> Response:
        fields = await self.checked_form(request)
        if isinstance(fields, Response):
            return fields
        response = RedirectResponse("/console/login", status_code=303)
        for name in (ACCESS, REFRESH, CSRF):
            response.delete_cookie(name, path="/console")
        return response

    # ---- folders -----------------------------------------------------------------------------

    async def folders(self, request: Request) -> Response:
        query = {k: v for k, v in request.query_params.items() if v}
        try:
            after = datetime.fromisoformat(query["after"]) if "after" in query else None
            before = datetime.fromisoformat(query["before"]) if "before" in query else None
        except ValueError:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "times are YYYY-MM-DDTHH:MM"), status_code=400
            )
        meta = {query.get("key", "transaction_id"): query["value"]} if "value" in query else {}
        wanted = query.get("resolution", "")
        if wanted and wanted not in pages.RESOLUTIONS:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "no such resolution"), status_code=400
            )
        kind = query.get("type", "")
        if kind and kind not in pages.ANALYSIS_TYPES:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "no such analysis type"), status_code=400
            )
        resolutions = [folders_pb2.Resolution.Value(f"RESOLUTION_{wanted}")] if wanted else []
        refreshed: list[auth_pb2.TokenPair] = []
        csrf = self.csrf_of(request)

        async def work(token: str) -> tuple[auth_pb2.Principal, folders_pb2.ListFoldersResponse]:
            who = await self.client.whoami(token)
            listed = await self.client.list_folders(
                token,
                meta=meta,
                created_after=after,
                created_before=before,
                resolutions=resolutions,
                page_size=PAGE_SIZE,
                page_token=query.get("page", ""),
            )
            return who, listed

        try:
            who, listed = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, csrf), request, refreshed)
        found = list(listed.folders)
        if kind:
            # the API filters by analyses present or not; the type is filtered on this page
            code = folders_pb2.AnalysisType.Value(f"ANALYSIS_TYPE_{kind}")
            found = [f for f in found if any(a.type == code for a in f.analyses)]
        next_link = (
            "/console/?" + urlencode({**query, "page": listed.next_page_token})
            if listed.next_page_token
            else ""
        )
        html = pages.folder_list(who, csrf, found, query, next_link)
        return self.finish(HTMLResponse(html), request, refreshed)

    async def folder(self, request: Request, notice: str = "") -> Response:
        folder_id = request.path_params["folder_id"]
        refreshed: list[auth_pb2.TokenPair] = []
        csrf = self.csrf_of(request)

        async def work(
            token: str,
        ) -> tuple[auth_pb2.Principal, folders_pb2.Folder, list[auth_pb2.AuditEvent] | None]:
            who = await self.client.whoami(token)
            found = await self.client.get_folder(token, folder_id)
            audit = None
            if who.role in (auth_pb2.ROLE_ADMIN, auth_pb2.ROLE_CLIENT_ADMIN):
                audit = await self.client.audit(token)
            return who, found, audit

        try:
            who, found, audit = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, csrf), request, refreshed)
        html = pages.folder(who, csrf, found, audit, notice or request.query_params.get("done", ""))
        return self.finish(HTMLResponse(html), request, refreshed)

    async def media(self, request: Request) -> Response:
        media_id = request.path_params["media_id"]
        refreshed: list[auth_pb2.TokenPair] = []
        try:
            info, first, rest = await self.as_person(
                request, refreshed, lambda token: self.client.first_chunk(token, media_id)
            )
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, ""), request, refreshed)

        async def body() -> object:
            yield first
            async for chunk in rest:
                yield chunk

        content_type = info.content_type or "application/octet-stream"
        response = StreamingResponse(
            body(),  # type: ignore[arg-type]
            media_type=content_type,
            headers={
                "Content-Disposition": "inline",
                "Content-Length": str(info.size),
                "Cache-Control": "private, no-store",
            },
        )
        return self.finish(response, request, refreshed)

    async def resolve(self, request: Request) -> Response:
        fields = await self.checked_form(request)
        if isinstance(fields, Response):
            return fields
        analysis_id = request.path_params["analysis_id"]
        decision = fields.get("resolution", "")
        if decision not in ("SUCCESS", "DECLINED"):
            return HTMLResponse(
                pages.error(None, "", "Bad request", "the decision is SUCCESS or DECLINED"),
                status_code=400,
            )
        refreshed: list[auth_pb2.TokenPair] = []
        code = folders_pb2.Resolution.Value(f"RESOLUTION_{decision}")
        try:
            analysis = await self.as_person(
                request,
                refreshed,
                lambda token: self.client.resolve(
                    token, analysis_id, code, fields.get("comment", "")
                ),
            )
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        target = f"/console/folders/{analysis.folder_id}?" + urlencode(
            {"done": f"Analysis {analysis_id} resolved: {decision}"}
        )
        return self.finish(RedirectResponse(target, status_code=303), request, refreshed)

    # ---- watch-lists -------------------------------------------------------------------------

    async def watchlists(self, request: Request) -> Response:
        refreshed: list[auth_pb2.TokenPair] = []
        lists = WatchListCalls(self.client)

        async def work(token: str) -> str:
            who = await self.client.whoami(token)
            return pages.watchlists(who, self.csrf_of(request), await lists.collections(token))

        try:
            html = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        return self.finish(HTMLResponse(html), request, refreshed)

    async def _watchlist_page(
        self,
        request: Request,
        found: collections_pb2.SearchResponse | None = None,
        notice: str = "",
    ) -> Response:
        name = request.path_params["name"]
        refreshed: list[auth_pb2.TokenPair] = []
        lists = WatchListCalls(self.client)

        async def work(token: str) -> str:
            who = await self.client.whoami(token)
            faces = await lists.faces(token, name)
            return pages.watchlist(who, self.csrf_of(request), name, faces, found, notice)

        try:
            html = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        return self.finish(HTMLResponse(html), request, refreshed)

    async def watchlist(self, request: Request) -> Response:
        return await self._watchlist_page(request, notice=request.query_params.get("done", ""))

    async def add_person(self, request: Request) -> Response:
        name = request.path_params["name"]
        upload = await self._checked_upload(request, max_files=MAX_PHOTOS)
        if isinstance(upload, Response):
            return upload
        fields, photos = upload
        label = fields.get("label", "").strip()
        if not label or not photos:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "a person needs a name and a photo"),
                status_code=400,
            )
        refreshed: list[auth_pb2.TokenPair] = []
        lists = WatchListCalls(self.client)

        async def work(token: str) -> int:
            for data, content_type in photos:
                await lists.add(token, name, label, data, content_type)
            return len(photos)

        try:
            added = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        target = f"/console/watchlists/{quote(name, safe='')}?" + urlencode(
            {"done": f"{label} added with {added} face(s)"}
        )
        return self.finish(RedirectResponse(target, status_code=303), request, refreshed)

    async def remove_face(self, request: Request) -> Response:
        name, face_id = request.path_params["name"], request.path_params["face_id"]
        fields = await self.checked_form(request)
        if isinstance(fields, Response):
            return fields
        refreshed: list[auth_pb2.TokenPair] = []
        lists = WatchListCalls(self.client)
        try:
            await self.as_person(
                request, refreshed, lambda token: lists.remove(token, name, face_id)
            )
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        target = f"/console/watchlists/{quote(name, safe='')}?" + urlencode(
            {"done": f"face {face_id} removed"}
        )
        return self.finish(RedirectResponse(target, status_code=303), request, refreshed)

    async def search(self, request: Request) -> Response:
        name = request.path_params["name"]
        upload = await self._checked_upload(request, max_files=1)
        if isinstance(upload, Response):
            return upload
        _, photos = upload
        if not photos:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "choose a photo to search"), status_code=400
            )
        data, content_type = photos[0]
        refreshed: list[auth_pb2.TokenPair] = []
        lists = WatchListCalls(self.client)
        try:
            found = await self.as_person(
                request, refreshed, lambda token: lists.search(token, name, data, content_type, 0)
            )
        except VigilRpcError as error:
            return self.finish(self._failed(error, None, self.csrf_of(request)), request, refreshed)
        response = await self._watchlist_page(request, found)
        return self.finish(response, request, refreshed)

    async def statistics(self, request: Request) -> Response:
        query = {k: v for k, v in request.query_params.items() if v}
        try:
            since = datetime.fromisoformat(query["since"]) if "since" in query else None
            until = datetime.fromisoformat(query["until"]) if "until" in query else None
        except ValueError:
            return HTMLResponse(
                pages.error(None, "", "Bad request", "dates are YYYY-MM-DD"), status_code=400
            )
        refreshed: list[auth_pb2.TokenPair] = []

        async def work(token: str) -> str:
            who = await self.client.whoami(token)
            found = await statistics(self.client, token, since, until)
            return pages.statistics(who, self.csrf_of(request), found, query)

        try:
            html = await self.as_person(request, refreshed, work)
        except VigilRpcError as error:
            return self.finish(self.failed(error, request), request, refreshed)
        return self.finish(HTMLResponse(html), request, refreshed)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response(status_code=404)
        data = resources.files("vigil.web.console").joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


async def _signed_out(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/console/login", status_code=303)


class _Policy:
    """Sets the console's CSP on each of its responses (the web app's own headers keep it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *[
                        (k, v)
                        for k, v in message.get("headers", [])
                        if k != b"content-security-policy"
                    ],
                    (b"content-security-policy", CSP.encode()),
                ]
            await send(message)

        await self.app(scope, receive, with_policy)


def console_routes(client: ConsoleClient) -> list[Mount]:
    """The console under ``/console`` (the web app mounts it and closes ``client`` at exit)."""
    console = Console(client)
    router = Router(
        routes=[
            Route("/", console.folders),
            Route("/login", console.login_page),
            Route("/login", console.login, methods=["POST"]),
            Route("/logout", console.logout, methods=["POST"]),
            Route("/folders/{folder_id}", console.folder),
            Route("/media/{media_id}", console.media),
            Route("/analyses/{analysis_id}/resolve", console.resolve, methods=["POST"]),
            Route("/watchlists", console.watchlists),
            Route("/watchlists/{name}", console.watchlist),
            Route("/watchlists/{name}/people", console.add_person, methods=["POST"]),
            Route(
                "/watchlists/{name}/faces/{face_id}/remove", console.remove_face, methods=["POST"]
            ),
            Route("/watchlists/{name}/search", console.search, methods=["POST"]),
            Route("/admin", partial(admin.page, console=console)),
            Route("/admin/users", partial(admin.act, console=console), methods=["POST"]),
            Route("/admin/keys", partial(admin.act, console=console), methods=["POST"]),
            Route(
                "/admin/users/{item}/disable", partial(admin.act, console=console), methods=["POST"]
            ),
            Route(
                "/admin/keys/{item}/revoke", partial(admin.act, console=console), methods=["POST"]
            ),
            Route("/statistics", console.statistics),
            Route("/static/{name}", console.static),
        ]
    )
    handled = ExceptionMiddleware(router, handlers={SignedOut: _signed_out})
    return [Mount("/console", app=_Policy(handled))]
