"""Certificates and kubeconfigs for the local control plane and its node: one CA, one issuer."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path
from typing import Any


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def issue_certificate(pki: Path, file: str, cn: str, org: str | None = None, server: bool = False,
                      sans: list[Any] | None = None, ca_file: str = "ca") -> None:
    """A key pair and a certificate signed by a CA in `pki` (client auth, or server auth)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key: Any = serialization.load_pem_private_key((pki / f"{ca_file}.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / f"{ca_file}.crt").read_bytes())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    (pki / f"{file}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    _write_key(pki / f"{file}.key", key)


def _make_ca(pki: Path, file: str, cn: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (pki / f"{file}.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / f"{file}.key", ca_key)


#: The name the API server's client certificate for extension API servers carries; they accept identity
#: headers (X-Remote-User) only from a certificate of the front-proxy CA with this name.
FRONT_PROXY_CLIENT = "front-proxy-client"


def _make_front_proxy(pki: Path) -> None:
    """The aggregation layer's own CA (as kubeadm's: apart from the cluster CA, so that no cluster client
    certificate can pass identity headers to an extension API server) and the API server's client
    certificate of it."""
    _make_ca(pki, "front-proxy-ca", "modelpilot-dev-front-proxy-ca")
    issue_certificate(pki, "front-proxy-client", FRONT_PROXY_CLIENT, ca_file="front-proxy-ca")


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate, the SA key pair and the
    aggregation layer's front-proxy CA and client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if (pki / "admin.crt").exists():
        if not (pki / "kubelet-client.crt").exists():  # a state directory from before this certificate
            issue_certificate(pki, "kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        if not (pki / "front-proxy-client.crt").exists():  # ... or from before the aggregation layer
            _make_front_proxy(pki)
        return
    pki.mkdir(parents=True, exist_ok=True)
    _make_ca(pki, "ca", "modelpilot-dev-ca")

    sans: list[Any] = [x509.DNSName(n) for n in (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1", *host_ips())]
    issue_certificate(pki, "apiserver", "kube-apiserver", server=True, sans=sans)
    issue_certificate(pki, "admin", "modelpilot-dev-admin", "system:masters")
    # how the API server proves itself to the kubelet (`kubectl logs`, `exec`)
    issue_certificate(pki, "kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    _make_front_proxy(pki)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa)
    (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def host_ips() -> list[str]:
    """Non-loopback IPv4 addresses of this machine (for the serving certificate)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ip for ip in out.split() if ":" not in ip and not ip.startswith("127.")]


def kubeconfig(server: str, pki: Path, cert: str = "admin") -> dict[str, Any]:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "modelpilot-dev",
        "clusters": [{"name": "modelpilot-dev", "cluster": {
            "server": server, "certificate-authority-data": b64(pki / "ca.crt")}}],
        "users": [{"name": cert, "user": {
            "client-certificate-data": b64(pki / f"{cert}.crt"), "client-key-data": b64(pki / f"{cert}.key")}}],
        "contexts": [{"name": "modelpilot-dev", "context": {"cluster": "modelpilot-dev", "user": cert}}],
    }
