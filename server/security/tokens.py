"""Ed25519-signed tokens (JWS / JWT with EdDSA, via PyJWT): access tokens and signed verdicts.

One key pair per deployment, kept in a PEM file every replica reads (created on first start if
missing). The public half is published as a JWK set so backends can verify verdicts offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vigil.inference.errors import Unauthenticated
from vigil.storage.tables import utcnow

ISSUER = "vigil"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path``; a new one is written there (mode 0600) if it is missing."""
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-key.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return key


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(raw),
        "kid": hashlib.sha256(raw).hexdigest()[:16],
        "alg": "EdDSA",
        "use": "sig",
    }


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.jwk = public_jwk(private_key.public_key())
        self.key_id = self.jwk["kid"]

    def derived_key(self, purpose: bytes) -> bytes:
        """A 32-byte secret for ``purpose`` (e.g. HMAC of page tokens), derived from the private
        key: the same on every replica that shares the key, useless to anyone without it."""
        raw = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hmac.new(raw, purpose, hashlib.sha256).digest()

    def jwks_json(self) -> str:
        return json.dumps({"keys": [self.jwk]})

    def sign(self, claims: dict[str, Any], ttl: timedelta, token_type: str) -> tuple[str, datetime]:
        now = utcnow()
        expires = now + ttl
        payload = {**claims, "iss": ISSUER, "typ": token_type, "iat": now, "exp": expires}
        token = jwt.encode(
            payload, self.private_key, algorithm="EdDSA", headers={"kid": self.key_id}
        )
        return token, expires

    def verify(self, token: str, token_type: str) -> dict[str, Any]:
        """The claims of a token this server signed, or ``Unauthenticated`` saying why not."""
        try:
            claims = jwt.decode(
                token,
                self.private_key.public_key(),
                algorithms=["EdDSA"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired; refresh it or log in again") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not valid") from None
        if claims.get("typ") != token_type:
            raise Unauthenticated("the token is not valid")
        return dict(claims)
