"""Nothing sensitive in logs: every log record of a full run, at DEBUG, is scanned for keys,
passwords, tokens, webhook secrets, media bytes and template values.

The run goes through a dedicated real server: accounts and keys through the Admin API, a person's
login and refresh, media uploads and the three analyses, a collection, a webhook delivered to a
local receiver, a signed verdict, the Instant API, and calls that fail (bad key, bad token, bad
password, bad media, a revoked key, a SAFE key asking for biometrics).
"""

from __future__ import annotations

import base64
import http.server
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_encoding

from tests.conftest import FACES, ORL, SPOOF, ServerThread, make_settings, read
from vigil.client.connection import Connection, authenticated_channel
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from vigil.v1 import folders_pb2 as fp

#: vigil's own packages, and the libraries it logs through, all at DEBUG for the run.
OWN_LOGGERS = ("vigil",)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class Capture(logging.Handler):
    """Every record, formatted as a production handler would (traceback included), plus extras."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")
        )
        self.lines: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:  # what a structured (JSON) formatter would print too
            text += " " + repr(extras)
        with self.lock_:
            self.lines.append(text)

    @property
    def text(self) -> str:
        with self.lock_:
            return "\n".join(self.lines)


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in OWN_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # what VIGIL_LOG_LEVEL=DEBUG does (basicConfig on the root)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


class Receiver:
    """A local webhook receiver (always 200); keeps each delivery's body and headers."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.deliveries.append((body, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.arrived.set()

            def log_message(self, *args: Any) -> None:  # keep the receiver's own lines out
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def media_fingerprints(data: bytes) -> list[str]:
    """How bytes would show in a log: base64 (standard, urlsafe), escaped repr, protobuf text."""
    body = data[64:] if len(data) > 200 else data  # past headers shared by every JPEG
    return [
        base64.b64encode(data).decode()[:40],
        base64.urlsafe_b64encode(data).decode()[:40],
        base64.b64encode(body).decode()[:40],
        base64.urlsafe_b64encode(body).decode()[:40],
        repr(body[:24])[2:-1],
        text_encoding.CEscape(body[:24], as_utf8=False),
        body[:24].hex(),
    ]


def template_fingerprints(values: list[float]) -> list[str]:
    head = [float(v) for v in values[:4]]
    found = []
    for v in head:
        found += [repr(v), float.hex(v), str(np.float32(v)), f"{v:.6f}"]
    found.append(struct.pack("<4f", *head).hex())
    found.append(", ".join(repr(v) for v in head[:2]))
    # short renderings ("0.0123") could occur by chance; keep the distinctive ones
    return [f for f in found if len(f.lstrip("-")) >= 8]


def token_fingerprints(token: str) -> list[str]:
    """A JWS whole, and its signature alone (the header is shared by every token)."""
    parts = token.split(".")
    return [token, parts[-1]] if len(parts) == 3 else [token]


def fails(code: grpc.StatusCode, call: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, f"{caught.value.code()}: {caught.value.details()}"


def upload(stub: Any, folder_id: str, data: bytes, tags: list[str]) -> Any:
    def parts() -> Iterator[fp.UploadMediaRequest]:
        yield fp.UploadMediaRequest(header=fp.UploadMediaHeader(folder_id=folder_id, tags=tags))
        for start in range(0, len(data), 65536):
            yield fp.UploadMediaRequest(chunk=data[start : start + 65536])

    return stub.UploadMedia(parts(), timeout=30)


def test_a_full_run_logs_no_secrets(
    models_dir: Path, captured: Capture, capfd: pytest.CaptureFixture[str]
) -> None:
    secrets: dict[str, str] = {}
    receiver = Receiver()
    server = ServerThread(
        make_settings(models_dir, webhook_allow_private=True, queue_poll_s=0.1)
    ).start()
    try:
        secrets |= _full_run(server, receiver)
    finally:
        server.stop()
        receiver.close()
    secrets["bootstrap ADMIN key"] = server.admin_key
    out, err = capfd.readouterr()  # what went to stdout/stderr besides logging (gRPC core too)

    logged = captured.text
    # the capture saw the run: the server, the deliveries, and DEBUG records
    assert "vigil serving on" in logged and "webhook delivery" in logged
    assert all(logging.getLogger(n).isEnabledFor(logging.DEBUG) for n in OWN_LOGGERS)
    assert receiver.deliveries, "the webhook was never delivered"
    leaks = {
        label: value
        for label, value in secrets.items()
        if value and (value in logged or value in out or value in err)
    }
    assert not leaks, "\n".join(
        f"{label}: {value[:60]!r} in {_where(value, logged, out + err)}"
        for label, value in leaks.items()
    )


def _where(value: str, logged: str, streams: str) -> str:
    text = logged if value in logged else streams
    at = text.index(value)
    return repr(text[max(0, at - 200) : at + 80])


def _full_run(server: ServerThread, receiver: Receiver) -> dict[str, str]:
    """Everything a deployment does in a day; returns what must never be logged, labelled."""
    secrets: dict[str, str] = {}
    company = f"hygiene-{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    secrets |= {"password": password, "wrong password": wrong_password}

    def channel(**credential: Any) -> grpc.Channel:
        return authenticated_channel(Connection(server.address, **credential))

    # ---- accounts: company, keys, a person with a password, login and refresh ----
    with server.channel() as root:
        admin = auth_pb2_grpc.AdminStub(root)
        company_id = admin.CreateCompany(auth_pb2.CreateCompanyRequest(name=company)).id

        def key(
            role: auth_pb2.Role.ValueType, mode: auth_pb2.ResultMode.ValueType, name: str
        ) -> auth_pb2.ApiKey:
            request = auth_pb2.CreateApiKeyRequest(
                company_id=company_id, name=name, role=role, result_mode=mode
            )
            return admin.CreateApiKey(request)

        admin_key = key(auth_pb2.ROLE_ADMIN, auth_pb2.RESULT_MODE_FULL, "ops").key
        client_key = key(auth_pb2.ROLE_CLIENT, auth_pb2.RESULT_MODE_FULL, "backend").key
        safe_key = key(auth_pb2.ROLE_CLIENT, auth_pb2.RESULT_MODE_SAFE, "web").key
        doomed = key(auth_pb2.ROLE_CLIENT, auth_pb2.RESULT_MODE_FULL, "doomed")
        admin.CreateUser(
            auth_pb2.CreateUserRequest(
                company_id=company_id,
                email=email,
                password=password,
                role=auth_pb2.ROLE_CLIENT,
                result_mode=auth_pb2.RESULT_MODE_FULL,
            )
        )
        admin.ListApiKeys(auth_pb2.ListApiKeysRequest(company_id=company_id))
        admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(api_key_id=doomed.id))
    for label, value in (
        ("ADMIN key", admin_key),
        ("CLIENT key", client_key),
        ("SAFE CLIENT key", safe_key),
        ("revoked key", doomed.key),
    ):
        secrets[label] = value
        secrets[f"{label} (secret part)"] = value[-20:]

    with grpc.insecure_channel(server.address) as plain:
        auth = auth_pb2_grpc.AuthStub(plain)
        first = auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        second = auth.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
        fails(
            grpc.StatusCode.UNAUTHENTICATED,
            lambda: auth.Login(auth_pb2.LoginRequest(email=email, password=wrong_password)),
        )
        fails(  # a refresh token is single use
            grpc.StatusCode.UNAUTHENTICATED,
            lambda: auth.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token)),
        )
    for label, pair in (("first", first), ("refreshed", second)):
        for i, fingerprint in enumerate(token_fingerprints(pair.access_token)):
            secrets[f"{label} access token [{i}]"] = fingerprint
        secrets[f"{label} refresh token"] = pair.refresh_token
    with channel(access_token=second.access_token) as person:
        assert auth_pb2_grpc.AuthStub(person).WhoAmI(auth_pb2.WhoAmIRequest()).user_id

    # ---- a webhook for the company, whose URL carries a token of its own ----
    hook_token = f"hooktoken{uuid.uuid4().hex}"
    with channel(api_key=admin_key) as ops:
        hook = webhooks_pb2_grpc.WebhooksStub(ops).CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(url=f"{receiver.url}/hook?token={hook_token}")
        )
    secrets |= {"webhook secret": hook.secret, "webhook URL token": hook_token}

    # ---- a folder: media, the three analyses, the delivery, the verdict ----
    photos = {
        "id photo": read(FACES / "obama.jpg"),
        "selfie": read(FACES / "obama2.jpg"),
        "spoof": read(SPOOF / "image_F1.jpg"),
    }
    with channel(api_key=client_key) as backend:
        folders = folders_pb2_grpc.FoldersStub(backend)
        folder = folders.CreateFolder(fp.CreateFolderRequest(meta={"transaction_id": "tx-42"}))
        upload(folders, folder.id, photos["id photo"], ["photo_id_front"])
        upload(folders, folder.id, photos["selfie"], ["photo_selfie"])
        analyses = [
            fp.AnalysisRequest(type=t)
            for t in (
                fp.ANALYSIS_TYPE_LIVENESS,
                fp.ANALYSIS_TYPE_BIOMETRY,
                fp.ANALYSIS_TYPE_BEST_SHOT,
            )
        ]
        folders.CreateAnalyses(fp.CreateAnalysesRequest(folder_id=folder.id, analyses=analyses))
        events = list(folders.WatchFolder(fp.WatchFolderRequest(folder_id=folder.id), timeout=60))
        assert events[-1].final
        done = folders.GetFolder(fp.GetFolderRequest(folder_id=folder.id))
        assert done.resolution == fp.RESOLUTION_SUCCESS
        best = next(a for a in done.analyses if a.type == fp.ANALYSIS_TYPE_BEST_SHOT)
        chunks = folders.DownloadMedia(
            fp.DownloadMediaRequest(media_id=best.decisive.output_media_id)
        )
        photos["best shot"] = b"".join(c.data for c in chunks)

        verdicts = auth_pb2_grpc.VerdictsStub(backend)
        verdict = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=folder.id))
        verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest())
        for i, fingerprint in enumerate(token_fingerprints(verdict.token)):
            secrets[f"verdict token [{i}]"] = fingerprint

        # bad media: bytes that are no image, uploaded and analysed, and sent to Instant
        junk = os.urandom(4096)
        photos["junk"] = junk
        spoofed = folders.CreateFolder(fp.CreateFolderRequest())
        upload(folders, spoofed.id, photos["spoof"], ["photo_selfie"])
        fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: upload(folders, spoofed.id, junk, ["photo_selfie"]),
        )
        folders.CreateAnalyses(
            fp.CreateAnalysesRequest(folder_id=spoofed.id, analyses=[analyses[0]])
        )
        list(folders.WatchFolder(fp.WatchFolderRequest(folder_id=spoofed.id), timeout=60))

        instant = instant_pb2_grpc.InstantStub(backend)
        template = instant.ExtractTemplate(
            instant_pb2.TemplateRequest(image=common_pb2.Media(data=photos["selfie"]))
        ).template
        fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: instant.Detect(instant_pb2.DetectRequest(image=common_pb2.Media(data=junk))),
        )

    # the delivery reaches the receiver (signed with the secret, which it must not log)
    assert receiver.arrived.wait(15), "no webhook delivery"

    with channel(api_key=safe_key) as web:
        instant = instant_pb2_grpc.InstantStub(web)
        instant.CheckLiveness(
            instant_pb2.LivenessRequest(image=common_pb2.Media(data=photos["selfie"]))
        )
        fails(
            grpc.StatusCode.PERMISSION_DENIED,
            lambda: instant.ExtractTemplate(
                instant_pb2.TemplateRequest(image=common_pb2.Media(data=photos["selfie"]))
            ),
        )

    # ---- a collection: enrol a face from an image and one from a template, search ----
    enrolled, probe = read(ORL / "s1" / "1.pgm"), read(ORL / "s1" / "2.pgm")
    photos |= {"enrolled": enrolled, "probe": probe}
    with channel(api_key=admin_key) as ops:
        collections = collections_pb2_grpc.CollectionsStub(ops)
        collections.CreateCollection(collections_pb2.CreateCollectionRequest(name="watch"))
        collections.AddFace(
            collections_pb2.AddFaceRequest(
                collection="watch", image=common_pb2.Media(data=enrolled), person_label="s1"
            )
        )
        collections.AddFace(
            collections_pb2.AddFaceRequest(collection="watch", template=template, person_label="o")
        )
        hits = collections.Search(
            collections_pb2.SearchRequest(collection="watch", image=common_pb2.Media(data=probe))
        ).hits
        assert hits and hits[0].face.person_label == "s1" and hits[0].match

    # ---- credentials that must fail ----
    tampered = second.access_token[:-3] + ("AAA" if second.access_token[-3:] != "AAA" else "BBB")
    credentials: tuple[tuple[str, dict[str, Any]], ...] = (
        ("a made-up key", {"api_key": f"vk_{uuid.uuid4().hex}"}),
        ("the revoked key", {"api_key": doomed.key}),
        ("a garbage token", {"access_token": f"garbage{uuid.uuid4().hex}"}),
        ("a tampered token", {"access_token": tampered}),
        ("a refresh token as access token", {"access_token": second.refresh_token}),
    )
    for label, credential in credentials:
        secrets[f"{label} (presented)"] = next(iter(credential.values()))
        with channel(**credential) as bad:
            who = auth_pb2_grpc.AuthStub(bad).WhoAmI
            fails(grpc.StatusCode.UNAUTHENTICATED, lambda: who(auth_pb2.WhoAmIRequest()))  # noqa: B023

    time.sleep(0.3)  # let the audit writes and the delivery's bookkeeping log what they log
    for label, data in photos.items():
        for i, fingerprint in enumerate(media_fingerprints(data)):
            secrets[f"media {label} [{i}]"] = fingerprint
    for i, fingerprint in enumerate(template_fingerprints(list(template.values))):
        secrets[f"template value [{i}]"] = fingerprint
    return secrets
