"""TLS for the lab: a CA with server and client certificates made with cryptography, and an
HTTPS backend (lab.web's backend behind TLS).

    python -m lab.tls make --dir DIR --ip 192.0.2.21 [--dns rs1.lab]
    python -m lab.tls serve --name rs1 --listen 0.0.0.0:443 --dir DIR [--require-client-cert]
        [--sni-log FILE]

`make` writes ca.pem, server.pem, server.key, client.pem and client.key into DIR (EC P-256, valid
for a day). `serve` prints `ready` once bound, answers like `lab.web serve` (including
`POST /status/NNN`), asks for a client certificate signed by the CA when told to, and appends
the server name (SNI) of every handshake to --sni-log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.web import Backend, split_listen


@dataclass(frozen=True)
class Material:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
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
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_material(directory: Path, ips: Sequence[str], dns: Sequence[str] = ()) -> Material:
    """A CA, a server certificate for `ips` and `dns`, and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("director lab CA", ca_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "director lab server",
        server_key,
        (ca.subject, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        dns=dns,
        ips=ips,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "director-health",
        client_key,
        (ca.subject, ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    material = Material(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    pem = serialization.Encoding.PEM
    material.ca.write_bytes(ca.public_bytes(pem))
    material.server_cert.write_bytes(server.public_bytes(pem))
    material.server_key.write_bytes(_key_pem(server_key))
    material.client_cert.write_bytes(client.public_bytes(pem))
    material.client_key.write_bytes(_key_pem(client_key))
    for key_file in (material.server_key, material.client_key):
        key_file.chmod(0o600)
    return material


def server_context(
    material: Material, require_client_cert: bool, sni_log: list[str] | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(material.server_cert, material.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(material.ca)
    if sni_log is not None:

        def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            sni_log.append(name or "")

        context.sni_callback = record
    return context


def material_in(directory: Path) -> Material:
    return Material(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


async def serve(
    name: str, listens: Sequence[str], material: Material, require: bool, sni_file: Path | None
) -> None:
    names: list[str] = []
    context = server_context(material, require, names)
    backend = Backend(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if sni_file is not None:
            with sni_file.open("a") as out:
                out.writelines(f"{n}\n" for n in names)
            names.clear()
        await backend.handle(reader, writer)

    servers = []
    for item in listens:
        host, port = split_listen(item)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        servers.append(await asyncio.start_server(handle, sock=sock, ssl=context))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.tls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make")
    make.add_argument("--dir", required=True, type=Path)
    make.add_argument("--ip", action="append", default=[])
    make.add_argument("--dns", action="append", default=[])
    srv = sub.add_parser("serve")
    srv.add_argument("--name", required=True)
    srv.add_argument("--listen", action="append", required=True, metavar="HOST:PORT")
    srv.add_argument("--dir", required=True, type=Path)
    srv.add_argument("--require-client-cert", action="store_true")
    srv.add_argument("--sni-log", type=Path)
    args = parser.parse_args(argv)
    if args.command == "make":
        make_material(args.dir, args.ip, args.dns)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                args.name,
                args.listen,
                material_in(args.dir),
                args.require_client_cert,
                args.sni_log,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
