"""The console's administration page: companies (ADMIN), people and API keys (ADMIN and
CLIENT_ADMIN), each section shown when the service lets the person read it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from vigil.client.errors import VigilRpcError
from vigil.v1 import auth_pb2, auth_pb2_grpc
from vigil.web.console import pages
from vigil.web.console.pages import e

if TYPE_CHECKING:
    from vigil.web.console.app import Console

T = TypeVar("T")
ROLES = ("CLIENT_ADMIN", "CLIENT_OPERATOR", "CLIENT", "SERVICE", "OPERATOR", "ADMIN")


def _stub(console: Console) -> auth_pb2_grpc.AdminAsyncStub:
    return auth_pb2_grpc.AdminStub(console.client.channel)


async def _readable(console: Console, call: Awaitable[T]) -> T | None:
    """A list call's reply, or None when the service refuses this person (the section is left
    out)."""
    try:
        return await console.client.call(call)
    except VigilRpcError as error:
        if error.code == "PERMISSION_DENIED":
            return None
        raise


def _select(name: str, values: tuple[str, ...], label: str, form: str) -> str:
    options = "".join(f'<option value="{v}">{v}</option>' for v in values)
    return (
        f'<label for="{form}-{name}">{label}</label>'
        f'<select id="{form}-{name}" name="{name}">{options}</select>'
    )


def render(
    who: auth_pb2.Principal,
    csrf: str,
    companies: auth_pb2.ListCompaniesResponse | None,
    users: auth_pb2.ListUsersResponse | None,
    keys: auth_pb2.ListApiKeysResponse | None,
    new_key: auth_pb2.ApiKey | None = None,
    notice: str = "",
) -> str:
    token = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    parts = [f'<p class="notice" role="status">{e(notice)}</p>' if notice else ""]
    if new_key is not None:
        parts.append(
            '<section class="secret" aria-label="New API key"><h2>New API key</h2>'
            f"<p>The key of <strong>{e(new_key.name)}</strong>, shown this once (the service "
            "keeps only its hash): copy it now.</p>"
            f'<p><code id="new-key">{e(new_key.key)}</code></p></section>'
        )
    if companies is not None:
        rows = "".join(
            f"<tr><td>{e(c.name)}</td><td>{e(c.id)}</td></tr>" for c in companies.companies
        )
        parts.append(
            "<h2>Companies</h2><table class='companies'><thead><tr><th scope='col'>Name</th>"
            f"<th scope='col'>Id</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if users is not None:
        rows = "".join(
            f"<tr><td>{e(u.email)}</td><td>{e(pages.role_name(u.role))}</td>"
            f"<td>{'FULL' if u.result_mode == auth_pb2.RESULT_MODE_FULL else 'SAFE'}</td>"
            f"<td>{'disabled' if u.disabled else 'active'}</td><td>"
            + (
                ""
                if u.disabled or u.id == who.user_id
                else f'<form method="post" action="/console/admin/users/{e(u.id)}/disable" '
                f'class="inline">{token}<button type="submit" aria-label="Disable {e(u.email)}">'
                "Disable</button></form>"
            )
            + "</td></tr>"
            for u in users.users
        )
        parts.append(
            "<h2>People</h2><table class='users'><thead><tr><th scope='col'>Email</th>"
            "<th scope='col'>Role</th><th scope='col'>Results</th><th scope='col'>State</th>"
            f"<th scope='col'></th></tr></thead><tbody>{rows}</tbody></table>"
            '<form method="post" action="/console/admin/users" class="filters" '
            f'aria-label="Add a person">{token}'
            '<label for="u-email">Email</label><input id="u-email" name="email" type="email" '
            'required><label for="u-password">Password (12+)</label>'
            '<input id="u-password" name="password" type="password" minlength="12" required>'
            + _select("role", ROLES[:3], "Role", "u")
            + _select("mode", ("SAFE", "FULL"), "Results", "u")
            + '<button type="submit">Add person</button></form>'
        )
    if keys is not None:
        rows = "".join(
            f"<tr><td>{e(k.name)}</td><td><code>{e(k.prefix)}…</code></td>"
            f"<td>{e(pages.role_name(k.role))}</td>"
            f"<td>{'FULL' if k.result_mode == auth_pb2.RESULT_MODE_FULL else 'SAFE'}</td>"
            f"<td>{'revoked' if k.HasField('revoked_at') else 'active'}</td><td>"
            + (
                ""
                if k.HasField("revoked_at")
                else f'<form method="post" action="/console/admin/keys/{e(k.id)}/revoke" '
                f'class="inline">{token}<button type="submit" aria-label="Revoke {e(k.name)}">'
                "Revoke</button></form>"
            )
            + "</td></tr>"
            for k in keys.keys
        )
        parts.append(
            "<h2>API keys</h2><table class='keys'><thead><tr><th scope='col'>Name</th>"
            "<th scope='col'>Prefix</th><th scope='col'>Role</th><th scope='col'>Results</th>"
            f"<th scope='col'>State</th><th scope='col'></th></tr></thead><tbody>{rows}</tbody>"
            '</table><form method="post" action="/console/admin/keys" class="filters" '
            f'aria-label="Create an API key">{token}'
            '<label for="k-name">Name</label><input id="k-name" name="name" required>'
            + _select("role", ("SERVICE", "CLIENT"), "Role", "k")
            + _select("mode", ("SAFE", "FULL"), "Results", "k")
            + '<button type="submit">Create key</button></form>'
        )
    if companies is None and users is None and keys is None:
        parts.append("<p>Administration is for ADMIN and CLIENT_ADMIN people.</p>")
    return pages.page("Administration", "".join(parts), who, csrf)


async def _show(
    console: Console,
    request: Request,
    new_key: auth_pb2.ApiKey | None = None,
    refreshed: list[auth_pb2.TokenPair] | None = None,
) -> Response:
    refreshed = refreshed if refreshed is not None else []
    stub = _stub(console)
    timeout = console.client.timeout

    async def work(token: str) -> str:
        metadata = console.client.metadata(token)
        who = await console.client.whoami(token)
        companies = await _readable(
            console,
            stub.ListCompanies(auth_pb2.ListCompaniesRequest(), timeout=timeout, metadata=metadata),
        )
        users = await _readable(
            console, stub.ListUsers(auth_pb2.ListUsersRequest(), timeout=timeout, metadata=metadata)
        )
        keys = await _readable(
            console,
            stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), timeout=timeout, metadata=metadata),
        )
        notice = request.query_params.get("done", "")
        return render(who, console.csrf_of(request), companies, users, keys, new_key, notice)

    try:
        html = await console.as_person(request, refreshed, work)
    except VigilRpcError as error:
        return console.finish(console.failed(error, request), request, refreshed)
    return console.finish(HTMLResponse(html), request, refreshed)


async def page(request: Request, console: Console) -> Response:
    return await _show(console, request)


async def act(request: Request, console: Console) -> Response:
    """The POSTs: add a person, disable a person, create a key (shown once), revoke a key."""
    fields = await console.checked_form(request)
    if isinstance(fields, Response):
        return fields
    stub = _stub(console)
    timeout = console.client.timeout
    refreshed: list[auth_pb2.TokenPair] = []
    path = request.url.path
    try:
        role = auth_pb2.Role.Value(f"ROLE_{fields.get('role', 'SERVICE')}")
        mode = auth_pb2.ResultMode.Value(f"RESULT_MODE_{fields.get('mode', 'SAFE')}")
    except ValueError:
        return HTMLResponse(pages.error(None, "", "Bad request", "no such role"), status_code=400)

    async def work(token: str) -> tuple[str, auth_pb2.ApiKey | None]:
        metadata = console.client.metadata(token)
        call = console.client.call
        if path.endswith("/users"):
            request_ = auth_pb2.CreateUserRequest(
                email=fields.get("email", ""),
                password=fields.get("password", ""),
                role=role,
                result_mode=mode,
            )
            await call(stub.CreateUser(request_, timeout=timeout, metadata=metadata))
            return f"{fields.get('email')} added", None
        if path.endswith("/disable"):
            disable = auth_pb2.DisableUserRequest(user_id=request.path_params["item"])
            await call(stub.DisableUser(disable, timeout=timeout, metadata=metadata))
            return "person disabled", None
        if path.endswith("/keys"):
            create = auth_pb2.CreateApiKeyRequest(
                name=fields.get("name", ""), role=role, result_mode=mode
            )
            key = await call(stub.CreateApiKey(create, timeout=timeout, metadata=metadata))
            return "", key
        revoke = auth_pb2.RevokeApiKeyRequest(api_key_id=request.path_params["item"])
        await call(stub.RevokeApiKey(revoke, timeout=timeout, metadata=metadata))
        return "key revoked", None

    try:
        done, key = await console.as_person(request, refreshed, work)
    except VigilRpcError as error:
        return console.finish(console.failed(error, request), request, refreshed)
    if key is not None:  # shown once, in this answer only (no redirect to reload it from)
        return await _show(console, request, key, refreshed)
    target = "/console/admin?" + urlencode({"done": done})
    return console.finish(RedirectResponse(target, status_code=303), request, refreshed)
