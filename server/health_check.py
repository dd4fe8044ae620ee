"""`vigil health`: the grpc.health.v1 check the images' HEALTHCHECK and the Kubernetes probes run.

It speaks TLS whenever the server does (``VIGIL_TLS_CERT_FILE`` set), trusting the server's own
certificate file by default (right for a self-signed certificate, or a chain file that ends with its
root) or ``--ca-file``; the name checked is the certificate's first DNS name unless
``--server-name`` says otherwise, so probing ``127.0.0.1`` works with a certificate made for a host
name. Exit status 0 only for SERVING; anything else prints why on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vigil.client.cli import Subcommands


@dataclass(frozen=True)
class Probe:
    address: str
    ca_file: Path | None = None
    """None: plaintext."""
    server_name: str | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    service: str = ""
    timeout_s: float = 4.0


def certificate_dns_name(cert_file: Path) -> str | None:
    """The first DNS name of the (first) certificate in ``cert_file``, or its common name."""
    from cryptography import x509  # lazy: only a TLS check needs it

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(common[0].value) if common else None


def _channel(probe: Probe) -> grpc.Channel:
    if probe.ca_file is None:
        return grpc.insecure_channel(probe.address)
    client_key = client_chain = None
    if probe.client_cert_file and probe.client_key_file:  # a server that demands mutual TLS
        client_chain = probe.client_cert_file.read_bytes()
        client_key = probe.client_key_file.read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=probe.ca_file.read_bytes(),
        private_key=client_key,
        certificate_chain=client_chain,
    )
    name = probe.server_name or certificate_dns_name(probe.ca_file)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(probe.address, credentials, options=options)


def check(probe: Probe) -> tuple[bool, str]:
    """(serving, what was seen): one Check call, never raises for an unreachable server."""
    channel = _channel(probe)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout_s
        )
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        mode = "TLS" if probe.ca_file else "plaintext"
        hint = ""
        if probe.ca_file and "handshake" in (details or "").lower():
            hint = " (TLS handshake failed: is the server plaintext, or its certificate another?)"
        seen = f"{probe.address} ({mode}): {code.name if code else 'error'}{hint}: {details}"
        return False, seen
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def run(args: argparse.Namespace) -> int:
    """The ``vigil health`` handler: settings give the port and TLS files, flags override them."""
    from vigil.server.settings import Settings

    settings = Settings()
    plaintext = args.plaintext or not settings.tls
    ca_file = None if plaintext else Path(args.ca_file or settings.tls_cert_file or "")
    probe = Probe(
        address=args.address or f"127.0.0.1:{settings.port}",
        ca_file=ca_file,
        server_name=args.server_name,
        client_cert_file=Path(args.client_cert) if args.client_cert else None,
        client_key_file=Path(args.client_key) if args.client_key else None,
        service=args.service,
        timeout_s=args.timeout,
    )
    serving, seen = check(probe)
    if serving:
        print(seen)
        return 0
    print(f"vigil health: not serving: {seen}", file=sys.stderr)
    return 1


def add_parser(sub: Subcommands) -> None:
    health = sub.add_parser(
        "health",
        help="grpc.health.v1 check of a local server, over TLS when VIGIL_TLS_CERT_FILE is set "
        "(exit 0 = SERVING)",
    )
    health.add_argument("--address", help="host:port (default 127.0.0.1:VIGIL_PORT)")
    health.add_argument(
        "--ca-file", help="CA to trust (default VIGIL_TLS_CERT_FILE, the server's own certificate)"
    )
    health.add_argument(
        "--server-name", help="name to check in the certificate (default its first DNS name)"
    )
    health.add_argument("--client-cert", help="client certificate, for a mutual-TLS server")
    health.add_argument("--client-key", help="client key, for a mutual-TLS server")
    health.add_argument("--plaintext", action="store_true", help="check a plaintext server")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    health.set_defaults(handler=run)
