"""`vigil tls self-signed`: a key and a self-signed certificate for trying TLS out (not production).

The certificate names ``localhost``, ``127.0.0.1``, ``::1`` and any ``--name`` given, so the
image's health check and a local client verify it; give clients the ``.crt`` as their CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

from vigil.client.cli import Subcommands

VALID_DAYS = 365


def write_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Write ``tls.crt`` and ``tls.key`` (mode 0600) into ``directory``; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    dns = [name for name in ["localhost", *names] if not _is_ip(name)]
    ips = [ipaddress.ip_address(n) for n in ["127.0.0.1", "::1", *names] if _is_ip(n)]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[-1])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.DNSName(n) for n in dict.fromkeys(dns)), *map(x509.IPAddress, ips)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    cert_file, key_file = write_self_signed(Path(args.out), list(args.name))
    print(f"VIGIL_TLS_CERT_FILE={cert_file}\nVIGIL_TLS_KEY_FILE={key_file}")
    return 0


def add_parser(sub: Subcommands) -> None:
    tls = sub.add_parser("tls", help="TLS helpers").add_subparsers(
        dest="tls_command", required=True
    )
    made = tls.add_parser(
        "self-signed", help="write tls.crt and tls.key, a self-signed pair for trying TLS out"
    )
    made.add_argument("--out", default=".", help="directory to write into (default .)")
    made.add_argument(
        "--name", action="append", default=[], help="another DNS name or IP (repeatable)"
    )
    made.set_defaults(handler=_run)
