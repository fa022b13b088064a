"""Credentials for a local trial of a secure deployment: a self-signed certificate authority, the SuperLink's TLS
certificate and key (for localhost and 127.0.0.1), and one authentication key pair per SuperNode (P-384, OpenSSH
format: the private key for `flower-supernode --auth-supernode-private-key`, the public one for `flwr supernode
register`). For real machines use certificates from your own authority (docs/deploy.md).

    locfedmix deploy my-app --config ... --credentials 3     # my-app/credentials/
"""

import datetime
import os
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID = datetime.timedelta(days=30)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                 authority: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID)
               .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True))
    if not authority:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool) -> None:
    """A new file; a private key is readable by its owner alone from the moment it exists."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644), "wb") as file:
        file.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def write_credentials(folder: Path, nodes: int) -> dict[str, Path]:
    """ca.crt, server.pem, server.key and node-<k> / node-<k>.pub for k < nodes, in a new folder; their paths."""
    folder.mkdir(parents=True, exist_ok=False)
    authority, server = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("locfedmix local CA", authority, "locfedmix local CA", authority, True)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM), False)
    _write(paths["cert"], _certificate("localhost", server, "locfedmix local CA", authority, False)
           .public_bytes(serialization.Encoding.PEM), False)
    _write(paths["key"], _pem_key(server), True)
    for k in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        paths[f"node-{k}"] = folder / f"node-{k}"
        _write(paths[f"node-{k}"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption()), True)
        paths[f"node-{k}.pub"] = folder / f"node-{k}.pub"
        _write(paths[f"node-{k}.pub"], key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                     serialization.PublicFormat.OpenSSH), False)
    return paths
