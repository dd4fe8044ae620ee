"""TLS and mutual TLS through the real server: certificates made here (a CA, a server certificate
for 127.0.0.1/localhost, client certificates from that CA and from another), clients that must get
in and clients that must be refused; and plaintext is refused unless explicitly allowed, by the
settings and by `vigil serve`, before any model is loaded."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import FACES, ServerThread, make_settings
from vigil.client import VigilClient, VigilRpcError
from vigil.client.connection import Connection, authenticated_channel
from vigil.server.security.tls import InsecureConfiguration, server_credentials
from vigil.v1 import auth_pb2, auth_pb2_grpc

PLAINTEXT_REFUSAL = "refusing to serve credentials over plaintext"


# ---- certificates ----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, _write_cert(cert, directory / f"{name}.pem"))

    def issue(self, directory: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        """A leaf certificate and its key: for 127.0.0.1 and localhost, or a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return (
            _write_cert(cert, directory / f"{name}.pem"),
            _write_key(key, directory / f"{name}-key.pem"),
        )


@dataclass
class Pki:
    ca: Authority
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Authority
    rogue_cert: Path
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority.create(directory, "vigil-test-ca")
    server_cert, server_key = ca.issue(directory, "vigil-server", server=True)
    client_cert, client_key = ca.issue(directory, "backend-client", server=False)
    rogue = Authority.create(directory, "rogue-ca")
    rogue_cert, rogue_key = rogue.issue(directory, "rogue-client", server=False)
    return Pki(ca, server_cert, server_key, client_cert, client_key, rogue, rogue_cert, rogue_key)


@pytest.fixture(scope="module")
def tls_server(models_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    settings = make_settings(
        models_dir,
        allow_plaintext=False,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(models_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    settings = make_settings(
        models_dir,
        allow_plaintext=False,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca.cert_file,
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


def who_am_i(connection: Connection) -> auth_pb2.Principal:
    with authenticated_channel(connection) as channel:
        return auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest(), timeout=10)


def refused(connection: Connection) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        who_am_i(connection)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return caught.value


# ---- TLS --------------------------------------------------------------------------------------


def test_a_tls_client_gets_in(tls_server: ServerThread, pki: Pki) -> None:
    port = tls_server.address.rsplit(":", 1)[1]
    for target in (f"127.0.0.1:{port}", f"localhost:{port}"):
        connection = Connection(target, api_key=tls_server.admin_key, tls_ca=pki.ca.cert_file)
        assert who_am_i(connection).role == auth_pb2.ROLE_ADMIN
    connection = Connection(
        tls_server.address, api_key=tls_server.admin_key, tls_ca=pki.ca.cert_file
    )
    with VigilClient(connection=connection) as client:  # the SDK, on the real models, over TLS
        result = client.liveness(FACES / "obama.jpg")
        assert result.live and result.score > 0.5


def test_tls_still_needs_a_credential(tls_server: ServerThread, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        who_am_i(Connection(tls_server.address, tls_ca=pki.ca.cert_file))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_plaintext_client_is_refused_by_a_tls_server(tls_server: ServerThread) -> None:
    refused(Connection(tls_server.address, api_key=tls_server.admin_key))
    with VigilClient(tls_server.address, api_key=tls_server.admin_key, timeout=10) as client:
        with pytest.raises(VigilRpcError) as caught:
            client.server_info()
        assert caught.value.code == "UNAVAILABLE"


def test_a_client_that_does_not_trust_the_server_is_refused(
    tls_server: ServerThread, pki: Pki
) -> None:
    refused(
        Connection(tls_server.address, api_key=tls_server.admin_key, tls_ca=pki.rogue_ca.cert_file)
    )


# ---- mutual TLS -------------------------------------------------------------------------------


def test_mtls_admits_a_client_certificate_from_the_ca(mtls_server: ServerThread, pki: Pki) -> None:
    connection = Connection(
        mtls_server.address,
        api_key=mtls_server.admin_key,
        tls_ca=pki.ca.cert_file,
        tls_cert=pki.client_cert,
        tls_key=pki.client_key,
    )
    assert who_am_i(connection).role == auth_pb2.ROLE_ADMIN


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: ServerThread, pki: Pki) -> None:
    refused(Connection(mtls_server.address, api_key=mtls_server.admin_key, tls_ca=pki.ca.cert_file))


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: ServerThread, pki: Pki) -> None:
    refused(
        Connection(
            mtls_server.address,
            api_key=mtls_server.admin_key,
            tls_ca=pki.ca.cert_file,
            tls_cert=pki.rogue_cert,
            tls_key=pki.rogue_key,
        )
    )


def test_mtls_refuses_plaintext(mtls_server: ServerThread) -> None:
    refused(Connection(mtls_server.address, api_key=mtls_server.admin_key))


# ---- plaintext only when allowed ----------------------------------------------------------


def test_server_credentials_refuse_plaintext_unless_allowed(tmp_path: Path, pki: Pki) -> None:
    models = tmp_path / "models"
    with pytest.raises(InsecureConfiguration, match=PLAINTEXT_REFUSAL):
        server_credentials(make_settings(models, allow_plaintext=False))
    assert server_credentials(make_settings(models, allow_plaintext=True)) is None
    half = make_settings(models, allow_plaintext=True, tls_cert_file=pki.server_cert)
    with pytest.raises(InsecureConfiguration, match="needs both"):
        server_credentials(half)  # half a TLS configuration is never quietly plaintext
    full = make_settings(
        models, allow_plaintext=False, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    assert isinstance(server_credentials(full), grpc.ServerCredentials)


def test_start_server_refuses_plaintext_before_loading_models(tmp_path: Path) -> None:
    # with no models at all, loading would fail first with another error
    settings = make_settings(tmp_path / "no-models", allow_plaintext=False)
    refusing = ServerThread(settings)
    with pytest.raises(InsecureConfiguration, match=PLAINTEXT_REFUSAL):
        refusing.start()
    refusing.thread.join(10)
    refusing.loop.close()
    assert not settings.data_dir.exists()


def test_vigil_serve_refuses_plaintext_before_loading(models_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_PORT="0", VIGIL_METRICS_PORT="0", VIGIL_DATA_DIR=str(tmp_path / "var"))
    empty = tmp_path / "no-models"
    empty.mkdir()
    vigil = [sys.executable, "-m", "vigil.server"]
    runs = [
        subprocess.Popen(
            [*vigil, "serve"],
            env={**env, "VIGIL_MODELS_DIR": str(models)},
            cwd=tmp_path,  # no .env is read from the repository
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for models in (models_dir, empty)
    ]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode != 0, out + err
        assert f"vigil: cannot start: {PLAINTEXT_REFUSAL}" in err, err
        assert "VIGIL_ALLOW_PLAINTEXT" in err and "VIGIL_TLS_CERT_FILE" in err
        assert "models" not in err.lower(), err  # the empty models dir was never looked at
    assert not (tmp_path / "var").exists()  # nor was the database opened
