"""Signed verdicts: GetVerdict through the real server (both databases, real models), verified
offline with GetPublicKeys' JWK set by the SDK's ``verify_verdict``; forgeries, other keys, expiry,
unfinished folders and other companies' folders are refused."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from tests.conftest import FACES, SPOOF, ServerThread, make_settings, read
from vigil.client import AsyncVigilClient, Verdict, VerdictError, VigilClient, verify_verdict
from vigil.client.connection import Connection
from vigil.server.security.tokens import public_jwk
from vigil.storage import analyses
from vigil.storage.results import AnalysisType
from vigil.v1 import auth_pb2, auth_pb2_grpc, folders_pb2_grpc
from vigil.v1 import folders_pb2 as fp

LIVENESS = fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)


# ---- helpers -------------------------------------------------------------------------------


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def upload(
    stub: folders_pb2_grpc.FoldersStub, folder_id: str, data: bytes, tags: list[str]
) -> fp.MediaInfo:
    def parts() -> Iterator[fp.UploadMediaRequest]:
        yield fp.UploadMediaRequest(header=fp.UploadMediaHeader(folder_id=folder_id, tags=tags))
        for start in range(0, len(data), 65536):
            yield fp.UploadMediaRequest(chunk=data[start : start + 65536])

    return stub.UploadMedia(parts(), timeout=30)


def finished_folder(
    stub: folders_pb2_grpc.FoldersStub, photo: Path, meta: dict[str, str]
) -> fp.Folder:
    """A folder with ``photo`` as its selfie whose LIVENESS analysis has run to the end."""
    folder = stub.CreateFolder(fp.CreateFolderRequest(meta=meta))
    upload(stub, folder.id, read(photo), ["photo_selfie"])
    stub.CreateAnalyses(fp.CreateAnalysesRequest(folder_id=folder.id, analyses=[LIVENESS]))
    events = list(stub.WatchFolder(fp.WatchFolderRequest(folder_id=folder.id), timeout=60))
    assert events[-1].final
    return stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id))


def expect(code: grpc.StatusCode, call: Callable[[], object], *words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, f"{caught.value.code()}: {caught.value.details()}"
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()


def refused(reason: str, token: str, jwks: Any, **expected: Any) -> VerdictError:
    with pytest.raises(VerdictError) as caught:
        verify_verdict(token, jwks, **expected)
    assert caught.value.reason == reason, str(caught.value)
    assert isinstance(caught.value, ValueError)
    return caught.value


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64d(token.split(".")[1]))
    return claims


class OwnKey:
    """An Ed25519 key of the test's own, with its JWK set, to sign tokens the verifier checks."""

    def __init__(self, kid: str | None = None) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.jwk = public_jwk(self.private.public_key())
        if kid is not None:
            self.jwk["kid"] = kid
        self.jwks = json.dumps({"keys": [self.jwk]})

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm="EdDSA", headers={"kid": self.jwk["kid"], **header}
        )


def verdict_claims(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims = {
        "iss": "vigil",
        "typ": "verdict",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "company": "c-1",
        "folder": "f-1",
        "analysis": None,
        "resolution": "SUCCESS",
        "transaction_id": "tx-1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


# ---- the verifier alone, on a key of the test's own -----------------------------------------


def test_a_good_token_gives_its_claims() -> None:
    key = OwnKey()
    verdict = verify_verdict(key.sign(verdict_claims()), key.jwks, expected_folder="f-1")
    assert verdict.folder == "f-1" and verdict.resolution == "SUCCESS"
    assert (verdict.transaction_id, verdict.analysis, verdict.company) == ("tx-1", None, "c-1")
    assert verdict.expires_at - verdict.issued_at == timedelta(minutes=5)
    assert verdict.key_id == key.jwk["kid"]
    with pytest.raises(AttributeError):
        verdict.resolution = "DECLINED"  # type: ignore[misc]  # frozen: refused at run time
    # the JWK set may also be given parsed, or as one JWK
    assert verify_verdict(key.sign(verdict_claims()), json.loads(key.jwks)).folder == "f-1"
    assert verify_verdict(key.sign(verdict_claims()), key.jwk).folder == "f-1"


def test_an_expired_token_fails_unless_within_the_leeway() -> None:
    key = OwnKey()
    past = datetime.now(UTC) - timedelta(minutes=10)
    token = key.sign(verdict_claims(iat=past, exp=past + timedelta(minutes=5)))
    assert "expired" in str(refused("EXPIRED", token, key.jwks))
    assert verify_verdict(token, key.jwks, leeway_s=600).folder == "f-1"


def test_a_token_from_the_future_fails() -> None:
    key = OwnKey()
    later = datetime.now(UTC) + timedelta(minutes=10)
    token = key.sign(verdict_claims(iat=later, exp=later + timedelta(minutes=5)))
    refused("NOT_YET_VALID", token, key.jwks)


def test_wrong_issuer_type_or_missing_claims_fail() -> None:
    key = OwnKey()
    refused("ISSUER", key.sign(verdict_claims(iss="someone-else")), key.jwks)
    refused("TYPE", key.sign(verdict_claims(typ="access")), key.jwks)
    refused("MISSING_CLAIM", key.sign(verdict_claims(typ=...)), key.jwks)
    refused("MISSING_CLAIM", key.sign(verdict_claims(folder=...)), key.jwks)
    refused("MISSING_CLAIM", key.sign(verdict_claims(resolution=None)), key.jwks)
    refused("MISSING_CLAIM", key.sign(verdict_claims(exp=...)), key.jwks)
    refused("INVALID", key.sign(verdict_claims(folder=7)), key.jwks)


def test_wrong_folder_or_transaction_fail() -> None:
    key = OwnKey()
    token = key.sign(verdict_claims())
    assert "'f-2'" in str(refused("WRONG_FOLDER", token, key.jwks, expected_folder="f-2"))
    refused("WRONG_TRANSACTION", token, key.jwks, expected_transaction_id="tx-2")
    no_tx = key.sign(verdict_claims(transaction_id=None))
    refused("WRONG_TRANSACTION", no_tx, key.jwks, expected_transaction_id="tx-1")
    assert verify_verdict(token, key.jwks, expected_transaction_id="tx-1").transaction_id == "tx-1"


def test_only_eddsa_is_accepted_whatever_the_header_says() -> None:
    key = OwnKey()
    claims = verdict_claims()
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": key.jwk["kid"]})
    refused("ALGORITHM", unsigned, key.jwks)
    # the classic confusion: HMAC keyed with the public key's bytes
    x = b64d(key.jwk["x"])
    hmac_token = jwt.encode(claims, x, algorithm="HS256", headers={"kid": key.jwk["kid"]})
    refused("ALGORITHM", hmac_token, key.jwks)


def test_keys_and_jwks_are_checked() -> None:
    key = OwnKey()
    token = key.sign(verdict_claims())
    other = OwnKey()
    refused("UNKNOWN_KEY", token, other.jwks)
    same_kid = OwnKey(kid=key.jwk["kid"])
    refused("BAD_SIGNATURE", same_kid.sign(verdict_claims()), key.jwks)
    refused("BAD_SIGNATURE", token, same_kid.jwks)  # a JWK set whose key was swapped
    refused("BAD_JWKS", token, "{not json")
    refused("BAD_JWKS", token, {"keys": "nope"})
    rsa_like = {"keys": [{**key.jwk, "kty": "RSA"}]}
    refused("BAD_JWKS", token, rsa_like)
    refused("BAD_JWKS", token, {"keys": [{**key.jwk, "alg": "RS256"}]})
    no_kid = jwt.encode(verdict_claims(), key.private, algorithm="EdDSA")
    refused("UNKNOWN_KEY", no_kid, key.jwks)
    refused("MALFORMED", "not-a-token", key.jwks)
    refused("MALFORMED", "a.b.c", key.jwks)


def test_without_pyjwt_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(ImportError, match=r"vigil-client.*pip install 'PyJWT\[crypto\]"):
        verify_verdict("a.b.c", "{}")


# ---- through the real server -----------------------------------------------------------------


def test_a_final_folder_gets_a_verdict_that_verifies_offline(api_server: ServerThread) -> None:
    company = f"test-{uuid.uuid4().hex[:12]}"
    key = api_server.new_key("CLIENT", company=company)
    transaction = f"tx-{uuid.uuid4().hex[:8]}"
    with api_server.channel(key) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        verdicts = auth_pb2_grpc.VerdictsStub(channel)
        me = auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())
        live = finished_folder(stub, FACES / "obama.jpg", {"transaction_id": transaction})
        spoof = finished_folder(stub, SPOOF / "image_F1.jpg", {})
        assert (live.resolution, spoof.resolution) == (
            fp.RESOLUTION_SUCCESS,
            fp.RESOLUTION_DECLINED,
        )
        jwks = verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest()).jwks_json
        signed = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=live.id))
        declined = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=spoof.id))
        analysis_id = live.analyses[0].id
        one = verdicts.GetVerdict(
            auth_pb2.GetVerdictRequest(folder_id=live.id, analysis_id=analysis_id)
        )

    keys = json.loads(jwks)["keys"]
    assert [(k["kty"], k["crv"], k["kid"]) for k in keys] == [("OKP", "Ed25519", signed.key_id)]
    assert "d" not in keys[0]  # never the private half
    verdict = verify_verdict(
        signed.token, jwks, expected_folder=live.id, expected_transaction_id=transaction
    )
    assert verdict == Verdict(
        folder=live.id,
        analysis=None,
        resolution="SUCCESS",
        transaction_id=transaction,
        company=me.company_id,
        issued_at=verdict.issued_at,
        expires_at=verdict.expires_at,
        key_id=signed.key_id,
        scope="folder",
        folder_resolution="SUCCESS",
        thresholds={analysis_id: {"liveness": 0.5}},  # the server's, inside the signed claims
        caller_thresholds=(),
    )
    assert verdict.expires_at == signed.expires_at.ToDatetime(tzinfo=UTC).replace(microsecond=0)
    assert timedelta(minutes=59) <= verdict.expires_at - verdict.issued_at <= timedelta(hours=1)
    assert abs(verdict.issued_at - datetime.now(UTC)) < timedelta(minutes=1)
    header = json.loads(b64d(signed.token.split(".")[0]))
    assert (header["alg"], header["kid"]) == ("EdDSA", signed.key_id)

    other = verify_verdict(declined.token, jwks, expected_folder=spoof.id)
    assert (other.resolution, other.transaction_id) == ("DECLINED", None)
    by_analysis = verify_verdict(
        one.token, jwks, expected_folder=live.id, expected_analysis_id=analysis_id
    )
    assert (by_analysis.analysis, by_analysis.resolution) == (analysis_id, "SUCCESS")
    assert (by_analysis.scope, by_analysis.folder_resolution) == ("analysis", "SUCCESS")
    # an analysis's verdict is refused where a folder's is expected (the default)
    refused("ANALYSIS_SCOPE", one.token, jwks, expected_folder=live.id)
    refused("WRONG_ANALYSIS", signed.token, jwks, expected_analysis_id=analysis_id)

    refused("WRONG_FOLDER", declined.token, jwks, expected_folder=live.id)
    refused("WRONG_TRANSACTION", signed.token, jwks, expected_transaction_id="tx-other")

    # one changed byte in the payload (the folder id, still valid JSON) or in the signature
    head, payload, signature = signed.token.split(".")
    raw = bytearray(b64d(payload))
    at = raw.index(live.id.encode()) + len(live.id) - 1
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    refused("BAD_SIGNATURE", f"{head}.{b64e(bytes(raw))}.{signature}", jwks)
    swapped = b64d(payload).replace(b'"SUCCESS"', b'"DECLINED"')
    refused("BAD_SIGNATURE", f"{head}.{b64e(swapped)}.{signature}", jwks)
    sig = bytearray(b64d(signature))
    sig[10] ^= 0x01
    refused("BAD_SIGNATURE", f"{head}.{payload}.{b64e(bytes(sig))}", jwks)

    # the same claims signed by another Ed25519 key: under the server's kid, or its own
    forger = OwnKey(kid=signed.key_id)
    refused("BAD_SIGNATURE", forger.sign(claims_of(signed.token)), jwks)
    refused("UNKNOWN_KEY", OwnKey().sign(claims_of(signed.token)), jwks)


def test_the_sdk_clients_fetch_verdicts_and_keys(api_server: ServerThread) -> None:
    company = f"test-{uuid.uuid4().hex[:12]}"
    key = api_server.new_key("CLIENT", company=company)
    with api_server.channel(key) as channel:
        folder = finished_folder(
            folders_pb2_grpc.FoldersStub(channel), FACES / "obama.jpg", {"transaction_id": "t-9"}
        )
    with VigilClient(connection=Connection(api_server.address, api_key=key)) as client:
        signed = client.get_verdict(folder.id)
        jwks = client.public_keys()
        analysis = client.get_verdict(folder.id, folder.analyses[0].id)
    assert verify_verdict(signed.token, jwks, expected_transaction_id="t-9").folder == folder.id
    only = folder.analyses[0].id
    assert verify_verdict(analysis.token, jwks, expected_analysis_id=only).analysis == only

    async def use_async() -> tuple[str, str]:
        async with AsyncVigilClient(connection=Connection(api_server.address, api_key=key)) as c:
            return (await c.get_verdict(folder.id)).token, await c.public_keys()

    token, async_jwks = asyncio.run(use_async())
    assert json.loads(async_jwks) == json.loads(jwks)
    assert verify_verdict(token, async_jwks, expected_folder=folder.id).resolution == "SUCCESS"


def test_an_access_token_is_not_a_verdict(api_server: ServerThread) -> None:
    company = f"test-{uuid.uuid4().hex[:12]}"
    api_server.ensure_company(company)
    md = (("vigil-company", company),)
    email, password = f"{uuid.uuid4().hex[:8]}@example.com", "a long enough password"
    with api_server.channel() as channel:
        auth_pb2_grpc.AdminStub(channel).CreateUser(
            auth_pb2.CreateUserRequest(
                email=email,
                password=password,
                role=auth_pb2.ROLE_CLIENT,
                result_mode=auth_pb2.RESULT_MODE_FULL,
            ),
            metadata=md,
        )
        jwks = auth_pb2_grpc.VerdictsStub(channel).GetPublicKeys(auth_pb2.GetPublicKeysRequest())
    with grpc.insecure_channel(api_server.address) as plain:
        pair = auth_pb2_grpc.AuthStub(plain).Login(
            auth_pb2.LoginRequest(email=email, password=password)
        )
    # signed by the very key that signs verdicts, but of type "access"
    refused("TYPE", pair.access_token, jwks.jwks_json)


def test_unfinished_and_foreign_folders_get_no_verdict(api_server: ServerThread) -> None:
    company = f"test-{uuid.uuid4().hex[:12]}"
    key = api_server.new_key("CLIENT", company=company)
    stranger = api_server.new_key("CLIENT", company=company + "-other")
    assert api_server.running is not None
    app = api_server.running.app
    with api_server.channel(key) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        verdicts = auth_pb2_grpc.VerdictsStub(channel)
        done = finished_folder(stub, FACES / "obama.jpg", {})
        empty = stub.CreateFolder(fp.CreateFolderRequest())
        pending = stub.CreateFolder(fp.CreateFolderRequest())
        upload(stub, pending.id, read(FACES / "obama2.jpg"), ["photo_selfie"])
        company_id = auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest()).company_id

        def queue_held(session: Session) -> str:
            """A LIVENESS analysis held by a worker that never finishes: PROCESSING for sure."""
            [row] = analyses.create_analyses(
                pending.id,
                [analyses.NewAnalysis(AnalysisType.LIVENESS)],
                company_id=company_id,
                session=session,
            )
            row.lease_owner = "tests (never finishes)"
            row.lease_expires_at = datetime.now(UTC) + timedelta(hours=1)
            session.add(row)
            return row.id

        held = api_server.call(lambda: app.db(queue_held))
        try:
            _no_verdicts_yet(api_server, verdicts, stub, stranger, done, empty, pending, held)
        finally:
            with api_server.channel() as admin:  # leave no held job in the shared queue
                folders_pb2_grpc.FoldersStub(admin).DeleteFolder(
                    fp.DeleteFolderRequest(folder_id=pending.id),
                    metadata=(("vigil-company", company),),
                )


def _no_verdicts_yet(
    api_server: ServerThread,
    verdicts: auth_pb2_grpc.VerdictsStub,
    stub: folders_pb2_grpc.FoldersStub,
    stranger: str,
    done: fp.Folder,
    empty: fp.Folder,
    pending: fp.Folder,
    held: str,
) -> None:
    def verdict(
        folder_id: str, analysis_id: str = "", stub: auth_pb2_grpc.VerdictsStub = verdicts
    ) -> Callable[[], object]:
        request = auth_pb2.GetVerdictRequest(folder_id=folder_id, analysis_id=analysis_id)
        return lambda: stub.GetVerdict(request)

    pending_now = stub.GetFolder(fp.GetFolderRequest(folder_id=pending.id))
    assert pending_now.resolution == fp.RESOLUTION_PROCESSING
    expect(grpc.StatusCode.FAILED_PRECONDITION, verdict(pending.id), "not final")
    expect(grpc.StatusCode.FAILED_PRECONDITION, verdict(pending.id, held), "not final")
    expect(grpc.StatusCode.FAILED_PRECONDITION, verdict(empty.id), "not final")
    # an analysis of another folder, and folders or analyses that do not exist
    expect(grpc.StatusCode.NOT_FOUND, verdict(done.id, held))
    expect(grpc.StatusCode.NOT_FOUND, verdict("no-such-folder"))
    expect(grpc.StatusCode.NOT_FOUND, verdict(done.id, "no-such-analysis"))
    assert verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=done.id)).token

    # another company's CLIENT, and an ADMIN acting in another company, see no such folder
    elsewhere_name = f"test-{uuid.uuid4().hex[:12]}"
    api_server.ensure_company(elsewhere_name)
    elsewhere = (("vigil-company", elsewhere_name),)
    with api_server.channel(stranger) as other, api_server.channel() as admin:
        theirs = auth_pb2_grpc.VerdictsStub(other)
        expect(grpc.StatusCode.NOT_FOUND, verdict(done.id, stub=theirs))
        expect(grpc.StatusCode.NOT_FOUND, verdict(done.id, done.analyses[0].id, stub=theirs))
        expect(grpc.StatusCode.NOT_FOUND, verdict(pending.id, stub=theirs))
        request = auth_pb2.GetVerdictRequest(folder_id=done.id)
        admin_stub = auth_pb2_grpc.VerdictsStub(admin)
        expect(
            grpc.StatusCode.NOT_FOUND, lambda: admin_stub.GetVerdict(request, metadata=elsewhere)
        )


def test_a_verdict_expires_after_its_ttl(models_dir: Path) -> None:
    running = ServerThread(make_settings(models_dir, verdict_ttl_s=1)).start()
    try:
        with running.channel() as channel:
            stub = folders_pb2_grpc.FoldersStub(channel)
            folder = finished_folder(stub, FACES / "obama.jpg", {})
            verdicts = auth_pb2_grpc.VerdictsStub(channel)
            signed = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=folder.id))
            jwks = verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest()).jwks_json
    finally:
        running.stop()
    claims = claims_of(signed.token)
    assert claims["exp"] - claims["iat"] == 1
    # whole seconds: the token may already be past exp; a leeway shows the signature is good
    assert verify_verdict(signed.token, jwks, leeway_s=30).folder == folder.id
    time.sleep(max(0.0, claims["exp"] + 1.1 - time.time()))
    refused("EXPIRED", signed.token, jwks)
