"""`vigil admin …` against the real server, as an operator runs it: a subprocess with the ADMIN key
in VIGIL_API_KEY and --server; what it creates works, what it revokes stops working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ServerThread
from vigil.client.connection import Connection, authenticated_channel
from vigil.v1 import auth_pb2, auth_pb2_grpc

PASSWORD = "correct horse battery staple"


def _vigil(
    server: ServerThread, cwd: Path, *args: str, api_key: str | None = None, json: bool = True
) -> subprocess.Popen[str]:
    """``vigil admin ARGS`` (with ``--json`` unless ``json`` is False), started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_API_KEY=api_key or server.admin_key, VIGIL_NEW_USER_PASSWORD=PASSWORD)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vigil.server",
            "admin",
            *args,
            "--server",
            server.address,
            *(["--json"] if json else []),
        ],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done(run: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = run.communicate(timeout=60)
    return run.returncode, out, err


def _json(run: subprocess.Popen[str]) -> Any:
    code, out, err = _done(run)
    assert code == 0, err
    return json.loads(out)


def _who(server: ServerThread, **credential: Any) -> auth_pb2.Principal:
    with authenticated_channel(Connection(server.address, **credential)) as channel:
        return auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest(), timeout=10)


def test_admin_cli_manages_companies_keys_and_users(server: ServerThread, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    company = _json(_vigil(server, tmp_path, "company-create", name))
    assert company["name"] == name and company["id"]

    # independent commands run side by side (each is a process start)
    key_run = _vigil(
        server, tmp_path, "key-create", "--role", "CLIENT", "--company", company["id"],
        "--name", "backend", "--safe",
    )  # fmt: skip
    user_run = _vigil(
        server, tmp_path, "user-create", email, "--role", "CLIENT_ADMIN", "--company", company["id"]
    )
    denied_run = _vigil(
        server, tmp_path, "key-create", "--role", "ADMIN", api_key="vk_not-a-real-key"
    )
    dup_run = _vigil(server, tmp_path, "company-create", name)
    key, user = _json(key_run), _json(user_run)
    code, out, err = _done(denied_run)
    assert code == 1 and out == "" and err.startswith("UNAUTHENTICATED: "), err
    code, out, err = _done(dup_run)
    assert code == 1 and err.startswith("ALREADY_EXISTS: ") and name in err, err

    assert (key["role"], key["result_mode"], key["company_id"]) == (
        "ROLE_CLIENT",
        "RESULT_MODE_SAFE",
        company["id"],
    )
    assert key["key"].startswith(key["prefix"]) and key["name"] == "backend"
    assert (user["email"], user["role"], user["company_id"]) == (
        email,
        "ROLE_CLIENT_ADMIN",
        company["id"],
    )
    assert PASSWORD not in json.dumps(user)

    # the key works, in its company, with its role and mode
    me = _who(server, api_key=key["key"])
    assert (me.company_id, me.company_name, me.role, me.result_mode) == (
        company["id"],
        name,
        auth_pb2.ROLE_CLIENT,
        auth_pb2.RESULT_MODE_SAFE,
    )
    # the user logs in with the password the CLI took from VIGIL_NEW_USER_PASSWORD
    with grpc.insecure_channel(server.address) as plain:
        pair = auth_pb2_grpc.AuthStub(plain).Login(
            auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=10
        )
    assert _who(server, access_token=pair.access_token).user_id == user["id"]

    # a company by its name, as well as by its id
    list_run = _vigil(server, tmp_path, "key-list", "--company", name)
    revoke_run = _vigil(server, tmp_path, "key-revoke", key["id"])
    listed = {k["id"]: k for k in _json(list_run)["keys"]}
    assert set(listed) == {key["id"]} and not listed[key["id"]]["key"]  # never the secret
    assert listed[key["id"]]["prefix"] == key["prefix"]
    revoked = _json(revoke_run)
    assert revoked["id"] == key["id"] and revoked["revoked_at"]
    with pytest.raises(grpc.RpcError) as caught:
        _who(server, api_key=key["key"])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_admin_cli_human_output_names_timeouts_and_a_closed_pipe(
    server: ServerThread, tmp_path: Path
) -> None:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    created = _vigil(server, tmp_path, "company-create", name, json=False)
    code, out, err = _done(created)
    assert code == 0 and out.startswith("id=") and f"name={name}" in out, (out, err)
    keys = [_vigil(server, tmp_path, "key-create", "--role", "SERVICE", "--company", name)
            for _ in range(2)]  # fmt: skip
    ids = {_json(run)["id"] for run in keys}
    # human: one line per key, no JSON
    code, out, err = _done(
        _vigil(server, tmp_path, "key-list", "--company", name, "--timeout", "20", json=False)
    )
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and all(line.startswith("id=") for line in lines), out
    assert {line.split()[0].removeprefix("id=") for line in lines} == ids
    # an unknown company name is refused before any call acts on it
    code, out, err = _done(_vigil(server, tmp_path, "key-list", "--company", "no-such-company"))
    assert code == 1 and err.startswith("NOT_FOUND: ") and "no-such-company" in err, err

    # `vigil admin audit | head`: the reader has gone before vigil writes; vigil says nothing
    # and exits as a command stopped by SIGPIPE would (141)
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    audit = subprocess.run(
        [sys.executable, "-m", "vigil.server", "admin", "audit", "--server", server.address],
        env={**env, "VIGIL_API_KEY": server.admin_key},
        cwd=tmp_path,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write_end)
    assert (audit.returncode, audit.stderr) == (141, "")
