"""Issue 14, security: thresholds belong to the operator, an analysis's verdict cannot pass for
its folder's, and an ADMIN's typo in ``vigil-company`` creates no company. Through the real
server, on SQLite and PostgreSQL, with the real models on real images."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import FACES, SPOOF, ServerThread, read
from vigil.client import VerdictError, verify_verdict
from vigil.v1 import auth_pb2, auth_pb2_grpc, folders_pb2_grpc
from vigil.v1 import folders_pb2 as fp

LIVENESS = fp.ANALYSIS_TYPE_LIVENESS
BIOMETRY = fp.ANALYSIS_TYPE_BIOMETRY


def _submit(
    stub: folders_pb2_grpc.FoldersStub,
    photos: list[Path],
    analyses: list[fp.AnalysisRequest],
    meta: dict[str, str] | None = None,
) -> fp.Folder:
    """One Submit: the photos as selfies, the analyses; the reply is the finished folder."""

    def parts() -> Iterator[fp.SubmitRequest]:
        yield fp.SubmitRequest(header=fp.SubmitHeader(meta=meta or {}, analyses=analyses))
        for photo in photos:
            yield fp.SubmitRequest(media=fp.UploadMediaHeader(tags=["photo_selfie"]))
            yield fp.SubmitRequest(chunk=read(photo))

    folder: fp.Folder = stub.Submit(parts(), timeout=120)
    return folder


def _refused(call: Any, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    details = caught.value.details() or ""
    assert caught.value.code() == code, f"{caught.value.code()}: {details}"
    for word in words:
        assert word in details, details
    return details


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@pytest.fixture
def company_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def test_a_safe_credential_may_not_choose_a_threshold(
    api_server: ServerThread, company_name: str
) -> None:
    """Finding 1: threshold=100 on a BIOMETRY of two people, 1e-6 on a LIVENESS of a printed
    photo, from a SAFE (front-end) key: refused, not silently ignored, before anything is
    written; the same key without a threshold still works."""
    safe = api_server.new_key("CLIENT", "SAFE", company=company_name)
    with api_server.channel(safe) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        folder = stub.CreateFolder(fp.CreateFolderRequest())
        for kind, value in ((BIOMETRY, 100.0), (LIVENESS, 1e-6), (LIVENESS, 0.5)):
            request = fp.CreateAnalysesRequest(
                folder_id=folder.id, analyses=[fp.AnalysisRequest(type=kind, threshold=value)]
            )
            _refused(
                partial(stub.CreateAnalyses, request),
                grpc.StatusCode.PERMISSION_DENIED,
                "SAFE",
                "threshold",
            )
        _refused(
            lambda: _submit(
                stub, [SPOOF / "image_F1.jpg"], [fp.AnalysisRequest(type=LIVENESS, threshold=1e-6)]
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "SAFE",
        )
        assert stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id)).analyses == []
        listed = stub.ListFolders(fp.ListFoldersRequest(page_size=10)).folders
        assert [f.id for f in listed] == [folder.id]  # the refused Submit wrote nothing
        # the server's own threshold: the printed photo is declined
        done = _submit(stub, [SPOOF / "image_F1.jpg"], [fp.AnalysisRequest(type=LIVENESS)])
        assert done.resolution == fp.RESOLUTION_DECLINED


def test_a_chosen_threshold_is_bounded_finite_and_signed(
    api_server: ServerThread, company_name: str
) -> None:
    """A FULL credential may choose a threshold inside its range (NaN, inf, out of range:
    INVALID_ARGUMENT); the threshold used is in the stored result and in the signed verdict."""
    key = api_server.new_key("CLIENT", "FULL", company=company_name)
    with api_server.channel(key) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        verdicts = auth_pb2_grpc.VerdictsStub(channel)
        folder = stub.CreateFolder(fp.CreateFolderRequest())
        bad = [
            (LIVENESS, float("nan"), "NaN"),
            (LIVENESS, float("inf"), "infinite"),
            (LIVENESS, -0.5, "(0, 1]"),
            (LIVENESS, 1.5, "(0, 1]"),
            (BIOMETRY, 100.0, "(0, 2]"),
            (fp.ANALYSIS_TYPE_BEST_SHOT, 0.5, "BEST_SHOT"),
        ]
        for kind, value, word in bad:
            request = fp.CreateAnalysesRequest(
                folder_id=folder.id, analyses=[fp.AnalysisRequest(type=kind, threshold=value)]
            )
            _refused(
                partial(stub.CreateAnalyses, request),
                grpc.StatusCode.INVALID_ARGUMENT,
                "threshold",
                word,
            )
        done = _submit(
            stub,
            [FACES / "obama.jpg"],
            [fp.AnalysisRequest(type=LIVENESS), fp.AnalysisRequest(type=LIVENESS, threshold=0.25)],
            {"transaction_id": "tx-thresholds"},
        )
        default, chosen = sorted(done.analyses, key=lambda a: a.thresholds["liveness"] != 0.5)
        assert dict(default.thresholds) == {"liveness": 0.5}
        assert dict(chosen.thresholds) == {"liveness": 0.25}
        signed = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=done.id))
        jwks = verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest()).jwks_json
    verdict = verify_verdict(signed.token, jwks, expected_transaction_id="tx-thresholds")
    assert verdict.thresholds == {default.id: {"liveness": 0.5}, chosen.id: {"liveness": 0.25}}
    assert verdict.caller_thresholds == (chosen.id,)
    assert _claims(signed.token)["caller_thresholds"] == [chosen.id]


def test_an_analysis_verdict_does_not_pass_for_its_declined_folder(
    api_server: ServerThread, company_name: str
) -> None:
    """Finding 2: a passing analysis of a DECLINED folder. Its token says scope "analysis", and
    verify_verdict(expected_folder, expected_transaction_id) refuses it unless the caller asks
    for that analysis."""
    key = api_server.new_key("SERVICE", "FULL", company=company_name)
    with api_server.channel(key) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        verdicts = auth_pb2_grpc.VerdictsStub(channel)
        # the printed photo: declined at the server's threshold; a very low threshold passes it
        folder = _submit(
            stub,
            [SPOOF / "image_F1.jpg"],
            [fp.AnalysisRequest(type=LIVENESS), fp.AnalysisRequest(type=LIVENESS, threshold=1e-6)],
            {"transaction_id": "tx-scope"},
        )
        assert folder.resolution == fp.RESOLUTION_DECLINED
        passing = [a for a in folder.analyses if a.resolution == fp.RESOLUTION_SUCCESS]
        assert len(passing) == 1, [a.decisive.score for a in folder.analyses]
        analysis_id = passing[0].id
        one = verdicts.GetVerdict(
            auth_pb2.GetVerdictRequest(folder_id=folder.id, analysis_id=analysis_id)
        )
        whole = verdicts.GetVerdict(auth_pb2.GetVerdictRequest(folder_id=folder.id))
        jwks = verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest()).jwks_json
    claims = _claims(one.token)
    assert (claims["scope"], claims["analysis"]) == ("analysis", analysis_id)
    assert (claims["resolution"], claims["folder_resolution"]) == ("SUCCESS", "DECLINED")
    with pytest.raises(VerdictError) as caught:
        verify_verdict(
            one.token, jwks, expected_folder=folder.id, expected_transaction_id="tx-scope"
        )
    assert caught.value.reason == "ANALYSIS_SCOPE"
    assert "DECLINED" in caught.value.message
    asked = verify_verdict(one.token, jwks, expected_analysis_id=analysis_id)
    assert (asked.scope, asked.resolution, asked.folder_resolution) == (
        "analysis",
        "SUCCESS",
        "DECLINED",
    )
    assert asked.caller_thresholds == (analysis_id,)
    folder_verdict = verify_verdict(
        whole.token, jwks, expected_folder=folder.id, expected_transaction_id="tx-scope"
    )
    assert (folder_verdict.scope, folder_verdict.resolution) == ("folder", "DECLINED")
    with pytest.raises(VerdictError) as wrong:
        verify_verdict(whole.token, jwks, expected_analysis_id=analysis_id)
    assert wrong.value.reason == "WRONG_ANALYSIS"


def test_an_admin_naming_an_unknown_company_gets_not_found(api_server: ServerThread) -> None:
    """Finding 3: a typo in vigil-company is NOT_FOUND, and no company is created."""
    typo = f"typo-{uuid.uuid4().hex[:12]}"
    with api_server.channel() as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        admin = auth_pb2_grpc.AdminStub(channel)
        _refused(
            lambda: stub.CreateFolder(
                fp.CreateFolderRequest(), metadata=(("vigil-company", typo),)
            ),
            grpc.StatusCode.NOT_FOUND,
            "company",
        )
        names = [c.name for c in admin.ListCompanies(auth_pb2.ListCompaniesRequest()).companies]
        assert typo not in names
        admin.CreateCompany(auth_pb2.CreateCompanyRequest(name=typo))  # the explicit way works
        created = stub.CreateFolder(fp.CreateFolderRequest(), metadata=(("vigil-company", typo),))
        assert created.id


def test_the_verifier_reads_the_scope_it_cannot_miss() -> None:
    """Offline, on a key of the test's own: a token naming an analysis is an analysis's verdict
    even without a scope claim (tokens signed before the claim existed); a scope that does not
    fit its claims is INVALID; a folder's verdict passes by default."""
    from tests.test_verdicts import OwnKey, verdict_claims

    key = OwnKey()
    folder = verify_verdict(key.sign(verdict_claims(scope="folder")), key.jwks)
    assert (folder.scope, folder.analysis) == ("folder", None)
    legacy = key.sign(verdict_claims(analysis="a-1"))
    for token in (legacy, key.sign(verdict_claims(analysis="a-1", scope="analysis"))):
        with pytest.raises(VerdictError) as caught:
            verify_verdict(token, key.jwks, expected_folder="f-1", expected_transaction_id="tx-1")
        assert caught.value.reason == "ANALYSIS_SCOPE"
        assert verify_verdict(token, key.jwks, expected_analysis_id="a-1").analysis == "a-1"
        with pytest.raises(VerdictError) as other:
            verify_verdict(token, key.jwks, expected_analysis_id="a-2")
        assert other.value.reason == "WRONG_ANALYSIS"
    for claims in (verdict_claims(scope="folder", analysis="a-1"), verdict_claims(scope="all")):
        with pytest.raises(VerdictError) as bad:
            verify_verdict(key.sign(claims), key.jwks, expected_analysis_id="a-1")
        assert bad.value.reason == "INVALID"
