"""Credentials: companies, users (scrypt password hashes), API keys (SHA-256 of a random secret),
refresh tokens (stored hashed, single use), and the audit log. Company-scoped like the rest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from vigil.inference.errors import AlreadyExists, InvalidArgument, Unauthenticated
from vigil.storage.common import decode_keyset_token, encode_page_token, not_found
from vigil.storage.tables import ApiKey, AuditEvent, Company, RefreshToken, User, utcnow

KEY_PREFIX = "vk_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
MIN_PASSWORD = 12


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
    except ValueError:
        return False
    actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(actual.hex(), digest)


# ---- companies -----------------------------------------------------------------------------


def create_company(name: str, *, session: Session) -> Company:
    if not name or len(name) > 200:
        raise InvalidArgument("company name must be 1-200 characters")
    if session.exec(select(Company).where(Company.name == name)).first() is not None:
        raise AlreadyExists(f"company {name!r} already exists")
    company = Company(name=name)
    session.add(company)
    session.flush()
    return company


def get_company(company_id: str, *, session: Session) -> Company:
    company = session.get(Company, company_id)
    if company is None:
        raise not_found("company", company_id)
    return company


def company_by_name(name: str, *, session: Session) -> Company:
    company = session.exec(select(Company).where(Company.name == name)).first()
    if company is None:
        raise not_found("company", name)
    return company


def list_companies(*, session: Session) -> list[Company]:
    return list(session.exec(select(Company).order_by(col(Company.created_at))).all())


# ---- users ---------------------------------------------------------------------------------


def create_user(
    email: str, password: str, role: str, result_mode: str, *, company_id: str, session: Session
) -> User:
    if "@" not in email or len(email) > 320:
        raise InvalidArgument("email is not an email address")
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD} characters")
    if session.exec(select(User).where(User.email == email.lower())).first() is not None:
        raise AlreadyExists(f"a user with email {email!r} already exists")
    user = User(
        company_id=company_id,
        email=email.lower(),
        password_hash=hash_password(password),
        role=role,
        result_mode=result_mode,
    )
    session.add(user)
    session.flush()
    return user


def get_user(user_id: str, *, company_id: str | None, session: Session) -> User:
    """A user of ``company_id`` (None: any company, for administrators)."""
    user = session.get(User, user_id)
    if user is None or (company_id is not None and user.company_id != company_id):
        raise not_found("user", user_id)
    return user


def disable_user(user_id: str, *, company_id: str | None, session: Session) -> User:
    """A user may no longer log in or use its tokens (company_id None: any company)."""
    user = get_user(user_id, company_id=company_id, session=session)
    user.disabled = True
    session.add(user)
    return user


def list_users(*, company_id: str, session: Session) -> list[User]:
    return list(session.exec(select(User).where(User.company_id == company_id)).all())


def authenticate_password(email: str, password: str, *, session: Session) -> User:
    """The user with these credentials; one message for every failure (no user enumeration)."""
    user = session.exec(select(User).where(User.email == email.lower())).first()
    if user is None:
        check_password(password, hash_password("timing-equaliser"))
    if user is None or user.disabled or not check_password(password, user.password_hash):
        raise Unauthenticated("wrong email or password, or the user is disabled")
    return user


# ---- API keys ------------------------------------------------------------------------------


def create_api_key(
    name: str,
    role: str,
    result_mode: str,
    *,
    company_id: str,
    created_by: str,
    expires_at: datetime | None,
    session: Session,
) -> tuple[ApiKey, str]:
    """A new key row and the key itself (``vk_<prefix>_<secret>``), which is never stored."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        company_id=company_id,
        name=name[:200],
        prefix=prefix,
        secret_hash=_sha256(secret),
        role=role,
        result_mode=result_mode,
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key, f"{KEY_PREFIX}{prefix}_{secret}"


def split_key(presented: str) -> tuple[str, str]:
    if not presented.startswith(KEY_PREFIX) or presented.count("_") < 2:
        raise Unauthenticated("malformed API key")
    prefix, _, secret = presented[len(KEY_PREFIX) :].partition("_")
    return prefix, secret


def authenticate_key(presented: str, *, session: Session) -> ApiKey:
    prefix, secret = split_key(presented)
    wanted = _sha256(secret)
    candidates = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).all()
    key = next((k for k in candidates if hmac.compare_digest(k.secret_hash, wanted)), None)
    if key is None:
        raise Unauthenticated("unknown API key")
    if key.revoked_at is not None:
        raise Unauthenticated("this API key was revoked")
    if key.expires_at is not None and key.expires_at <= utcnow():
        raise Unauthenticated("this API key has expired")
    return key


def touch_key(key_id: str, *, session: Session) -> None:
    key = session.get(ApiKey, key_id)
    if key is not None:
        key.last_used_at = utcnow()
        session.add(key)


def get_api_key(key_id: str, *, company_id: str | None, session: Session) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or (company_id is not None and key.company_id != company_id):
        raise not_found("API key", key_id)
    return key


def list_api_keys(*, company_id: str, session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).where(ApiKey.company_id == company_id)).all())


def revoke_api_key(key_id: str, *, company_id: str | None, session: Session) -> ApiKey:
    key = get_api_key(key_id, company_id=company_id, session=session)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    return key


def count_admins(*, session: Session) -> int:
    users = session.exec(select(User).where(User.role == "ADMIN")).all()
    keys = session.exec(select(ApiKey).where(ApiKey.role == "ADMIN")).all()
    return len(users) + len(keys)


# ---- refresh tokens ------------------------------------------------------------------------


def issue_refresh_token(user_id: str, ttl: timedelta, *, session: Session) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    expires = utcnow() + ttl
    session.add(RefreshToken(user_id=user_id, token_hash=_sha256(token), expires_at=expires))
    session.flush()
    return token, expires


def use_refresh_token(token: str, *, session: Session) -> User:
    """Spend a refresh token (single use) and return its user."""
    row = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == _sha256(token))
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise Unauthenticated("the refresh token is unknown, used or expired")
    row.used_at = utcnow()
    session.add(row)
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        raise Unauthenticated("the refresh token's user is disabled")
    return user


# ---- audit -----------------------------------------------------------------------------------


def record_audit(event: AuditEvent, *, session: Session) -> None:
    session.add(event)


def list_audit(
    *, company_id: str, page_size: int, page_token: str, session: Session
) -> tuple[list[AuditEvent], str]:
    stmt = select(AuditEvent).where(AuditEvent.company_id == company_id)
    if page_token:
        moment, last_id = decode_keyset_token(page_token)
        stmt = stmt.where(
            (col(AuditEvent.at) < moment)
            | ((col(AuditEvent.at) == moment) & (col(AuditEvent.id) < last_id))
        )
    rows = list(
        session.exec(
            stmt.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()).limit(page_size + 1)
        )
    )
    token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        token = encode_page_token([rows[-1].at.isoformat(), rows[-1].id])
    return rows, token


def bootstrap_admin(company_name: str, *, session: Session) -> tuple[ApiKey, str]:
    """The first ADMIN key, in the operator's company (created if needed)."""
    company = session.exec(select(Company).where(Company.name == company_name)).first()
    if company is None:
        company = create_company(company_name, session=session)
    return create_api_key(
        "bootstrap admin",
        "ADMIN",
        "FULL",
        company_id=company.id,
        created_by="bootstrap",
        expires_at=None,
        session=session,
    )
