"""Offline verification of signed verdicts (``Verdicts.GetVerdict``) with the server's JWK set.

A backend that receives a verdict token from a browser checks it here, with no call to vigil::

    jwks = client.public_keys()            # once, then cached (GetPublicKeys)
    verdict = verify_verdict(token, jwks, expected_folder=folder_id)
    if verdict.resolution == "SUCCESS": ...

By default only a folder's verdict is accepted: a token about one analysis (``scope`` claim
``analysis``; a passing analysis may sit in a DECLINED folder) is refused unless the caller asks
for that analysis with ``expected_analysis_id=``.

The token is a JWS compact token signed with Ed25519 (``alg`` EdDSA). Only EdDSA is accepted,
whatever the token's header says; the key is the JWK whose ``kid`` the header names; the issuer
must be ``vigil`` and the ``typ`` claim ``verdict`` (an access token signed by the same key is not a
verdict). Needs PyJWT and cryptography, dependencies of vigil-client (``PyJWT[crypto]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ISSUER = "vigil"
TOKEN_TYPE = "verdict"
ALGORITHM = "EdDSA"
INSTALL_HINT = (
    "verifying verdicts needs PyJWT and cryptography, which vigil-client depends on; "
    "install them: pip install 'PyJWT[crypto]>=2.10'"
)


class VerdictError(ValueError):
    """A verdict token that must not be trusted; ``reason`` says why in one word.

    Reasons: MALFORMED, ALGORITHM, BAD_JWKS, UNKNOWN_KEY, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID,
    ISSUER, TYPE, MISSING_CLAIM, WRONG_FOLDER, WRONG_TRANSACTION, ANALYSIS_SCOPE, WRONG_ANALYSIS,
    INVALID.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Verdict:
    """The verified claims of a signed verdict."""

    folder: str
    #: The analysis the verdict is about; None for the folder's aggregate resolution.
    analysis: str | None
    #: SUCCESS, DECLINED, OPERATOR_REQUIRED or FAILED.
    resolution: str
    #: The folder's meta ``transaction_id`` when it had one.
    transaction_id: str | None
    company: str
    issued_at: datetime
    expires_at: datetime
    key_id: str = ""
    #: "folder" (the folder's resolution) or "analysis" (one analysis's).
    scope: str = "folder"
    #: The folder's resolution when the token was signed (also in an analysis's verdict).
    folder_resolution: str | None = None
    #: Analysis id → the thresholds its decision used.
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Analyses decided with a threshold the caller chose rather than the server's.
    caller_thresholds: tuple[str, ...] = ()


def _keys(jwks: str | bytes | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if isinstance(jwks, str | bytes):
        try:
            jwks = json.loads(jwks)
        except ValueError as exc:
            raise VerdictError("BAD_JWKS", f"the JWK set is not valid JSON ({exc})") from None
    if not isinstance(jwks, Mapping):
        raise VerdictError("BAD_JWKS", "the JWK set must be a JSON object")
    if "kty" in jwks:  # a single JWK
        return [jwks]
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, Mapping) for k in keys):
        raise VerdictError("BAD_JWKS", 'the JWK set needs a "keys" list of objects')
    return keys


def _public_jwk(jwks: str | bytes | Mapping[str, Any], kid: str) -> dict[str, Any]:
    """The public half of the JWK named ``kid``, once it is checked to be an EdDSA signing key."""
    matching = [k for k in _keys(jwks) if k.get("kid") == kid]
    if not matching:
        raise VerdictError("UNKNOWN_KEY", f"no key with kid {kid!r} in the JWK set")
    jwk = dict(matching[0])
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise VerdictError("BAD_JWKS", f"key {kid!r} is not an Ed25519 (OKP) key")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise VerdictError("BAD_JWKS", f"key {kid!r} is not an EdDSA signing key")
    jwk.pop("d", None)  # only ever the public half
    return jwk


def _text(claims: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = claims.get(name)
    if value is None or value == "":
        if required:
            raise VerdictError("MISSING_CLAIM", f"the verdict has no {name!r} claim")
        return None
    if not isinstance(value, str):
        raise VerdictError("INVALID", f"the verdict's {name!r} claim is not a string")
    return value


def _decode(
    token: str, jwks: str | bytes | Mapping[str, Any], leeway_s: float
) -> tuple[dict[str, Any], str]:
    """The claims of ``token`` and its key id, once its signature, issuer and lifetime check out."""
    try:  # PyJWT with its cryptography backend; an install without them gets the hint
        import jwt
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from jwt.algorithms import OKPAlgorithm  # noqa: F401  (absent without cryptography)
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    if isinstance(token, bytes):
        token = token.decode("ascii", errors="replace")
    if not isinstance(token, str) or token.count(".") != 2:
        raise VerdictError(
            "MALFORMED", "a verdict is a JWS compact token: header.payload.signature"
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise VerdictError("MALFORMED", f"the token's header cannot be read ({exc})") from None
    if header.get("alg") != ALGORITHM:
        raise VerdictError("ALGORITHM", f"algorithm {header.get('alg')!r} is not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerdictError("UNKNOWN_KEY", "the token names no key (kid)")
    jwk = _public_jwk(jwks, kid)
    try:
        key = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
    except jwt.PyJWTError as exc:
        raise VerdictError("BAD_JWKS", f"key {kid!r} cannot be read ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerdictError("BAD_JWKS", f"key {kid!r} is not an Ed25519 public key")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            leeway=leeway_s,
            options={"require": ["iss", "typ", "iat", "exp"]},
        )
    except jwt.InvalidSignatureError:
        raise VerdictError("BAD_SIGNATURE", "the signature does not verify") from None
    except jwt.ExpiredSignatureError:
        raise VerdictError("EXPIRED", "the verdict has expired") from None
    except jwt.ImmatureSignatureError:
        raise VerdictError("NOT_YET_VALID", "the verdict is issued in the future") from None
    except jwt.InvalidIssuerError:
        raise VerdictError("ISSUER", f"the verdict was not issued by {ISSUER!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise VerdictError("MISSING_CLAIM", f"the verdict has no {exc.claim!r} claim") from None
    except jwt.DecodeError as exc:
        raise VerdictError("MALFORMED", f"the token cannot be decoded ({exc})") from None
    except jwt.PyJWTError as exc:
        raise VerdictError("INVALID", f"the verdict is not valid ({exc})") from None
    return claims, kid


def verify_verdict(
    token: str,
    jwks: str | bytes | Mapping[str, Any],
    *,
    expected_folder: str | None = None,
    expected_transaction_id: str | None = None,
    expected_analysis_id: str | None = None,
    leeway_s: float = 0,
) -> Verdict:
    """The claims of ``token`` once its signature, issuer, type, lifetime and scope are checked.

    ``jwks`` is ``GetPublicKeys``' JSON (or its parsed dict). ``expected_folder`` and
    ``expected_transaction_id``, when given, must equal the token's. Without
    ``expected_analysis_id`` only a folder's verdict is accepted; with it, only that analysis's.
    ``leeway_s`` allows for clock skew. Raises :class:`VerdictError` on any failure, and
    ImportError without PyJWT.
    """
    claims, kid = _decode(token, jwks, leeway_s)
    if claims.get("typ") != TOKEN_TYPE:
        raise VerdictError("TYPE", f"the token is a {claims.get('typ')!r} token, not a verdict")
    folder = _text(claims, "folder", True)
    transaction_id = _text(claims, "transaction_id", False)
    if expected_folder is not None and folder != expected_folder:
        raise VerdictError(
            "WRONG_FOLDER", f"the verdict is about folder {folder!r}, not {expected_folder!r}"
        )
    if expected_transaction_id is not None and transaction_id != expected_transaction_id:
        raise VerdictError(
            "WRONG_TRANSACTION",
            f"the verdict's transaction is {transaction_id!r}, not {expected_transaction_id!r}",
        )
    assert folder is not None
    analysis = _text(claims, "analysis", False)
    scope = _scope(claims, analysis, expected_analysis_id)
    thresholds = claims.get("thresholds") or {}
    caller = claims.get("caller_thresholds") or []
    if not isinstance(thresholds, dict) or not isinstance(caller, list):
        raise VerdictError("INVALID", "the verdict's thresholds claims are malformed")
    return Verdict(
        folder=folder,
        analysis=analysis,
        resolution=_text(claims, "resolution", True) or "",
        transaction_id=transaction_id,
        company=_text(claims, "company", True) or "",
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        key_id=kid,
        scope=scope,
        folder_resolution=_text(claims, "folder_resolution", False),
        thresholds=thresholds,
        caller_thresholds=tuple(str(a) for a in caller),
    )


def _scope(claims: Mapping[str, Any], analysis: str | None, expected: str | None) -> str:
    """The token's scope, once it is the one the caller expects (a folder's by default)."""
    scope = claims.get("scope") or ("analysis" if analysis else "folder")
    if scope not in ("folder", "analysis") or (scope == "analysis") != (analysis is not None):
        raise VerdictError("INVALID", f"the verdict's scope {scope!r} does not fit its claims")
    if scope == "analysis" and expected is None:
        raise VerdictError(
            "ANALYSIS_SCOPE",
            f"the verdict is about analysis {analysis!r} only, not the folder (whose resolution "
            f"was {claims.get('folder_resolution')!r}); pass expected_analysis_id= to accept it",
        )
    if expected is not None and analysis != expected:
        raise VerdictError(
            "WRONG_ANALYSIS",
            f"the verdict is about {'analysis ' + repr(analysis) if analysis else 'the folder'}, "
            f"not analysis {expected!r}",
        )
    return str(scope)


CHALLENGE_TOKEN_TYPE = "challenge_verdict"


@dataclass(frozen=True)
class ChallengeVerdictClaims:
    """The verified claims of a challenge's verdict (``AnswerChallenge``'s ``verdict_token``)."""

    challenge: str
    #: The challenge's nonce, as CreateChallenge gave it.
    nonce: str
    #: SUCCESS (the gestures were made by a live face) or DECLINED.
    resolution: str
    gestures: tuple[str, ...]
    company: str
    #: SHA-256 of the frames the server analysed.
    frames_sha256: str
    issued_at: datetime
    expires_at: datetime
    key_id: str = ""


def verify_challenge_verdict(
    token: str,
    jwks: str | bytes | Mapping[str, Any],
    *,
    expected_challenge: str | None = None,
    expected_nonce: str | None = None,
    leeway_s: float = 0,
) -> ChallengeVerdictClaims:
    """The claims of a challenge verdict token once its signature, issuer, type (``typ``
    ``challenge_verdict``: a folder verdict is refused here, and this token by
    :func:`verify_verdict`) and lifetime check out, and its challenge and nonce are the expected
    ones when given. Raises :class:`VerdictError` (WRONG_CHALLENGE, WRONG_NONCE, or a reason of
    :func:`verify_verdict`)."""
    claims, kid = _decode(token, jwks, leeway_s)
    if claims.get("typ") != CHALLENGE_TOKEN_TYPE:
        raise VerdictError(
            "TYPE", f"the token is a {claims.get('typ')!r} token, not a challenge verdict"
        )
    challenge = _text(claims, "challenge", True) or ""
    nonce = _text(claims, "nonce", True) or ""
    if expected_challenge is not None and challenge != expected_challenge:
        raise VerdictError(
            "WRONG_CHALLENGE", f"the verdict is about {challenge!r}, not {expected_challenge!r}"
        )
    if expected_nonce is not None and nonce != expected_nonce:
        raise VerdictError("WRONG_NONCE", "the verdict's nonce is not the challenge's")
    gestures = claims.get("gestures") or []
    if not isinstance(gestures, list):
        raise VerdictError("INVALID", "the verdict's gestures claim is not a list")
    return ChallengeVerdictClaims(
        challenge=challenge,
        nonce=nonce,
        resolution=_text(claims, "resolution", True) or "",
        gestures=tuple(str(g) for g in gestures),
        company=_text(claims, "company", True) or "",
        frames_sha256=_text(claims, "frames_sha256", False) or "",
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        key_id=kid,
    )
