"""A private network namespace in which auth.openai.com is our fake issuer.

The real pi-ai and codex CLIs have the issuer URL built in, and codex's hidden
``--experimental_issuer`` does not move its token exchange. So those tests run inside a network
namespace (``ip netns``) whose hosts file (``/etc/netns/<name>/hosts``, which ``ip netns exec``
mounts over /etc/hosts) maps auth.openai.com to 127.0.0.1, where the fake issuer serves HTTPS
with a certificate from a throwaway test CA that the clients are told to trust
(``NODE_EXTRA_CA_CERTS``, ``SSL_CERT_FILE``). Nothing leaves the namespace: it has only loopback.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOSTNAME = "auth.openai.com"


@dataclass(frozen=True)
class CertAuthority:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_ca(directory: Path, names: tuple[str, ...] = (f"DNS:{HOSTNAME}",)) -> CertAuthority:
    """A CA and a server certificate for ``names`` (subjectAltName entries; default
    auth.openai.com), made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "ext.cnf"
    ext.write_text(
        f"subjectAltName={','.join(names)}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
        "-days",
        "2",
        "-subj",
        "/CN=chatgpt-login test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={HOSTNAME}",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return CertAuthority(ca_cert, cert, key)


@contextmanager
def network_namespace() -> Iterator[str]:
    """A namespace with loopback up and auth.openai.com pointing at it; removed afterwards."""
    if shutil.which("ip") is None:
        raise AssertionError(
            "iproute2's ip is needed for the real-client tests (apt-get install iproute2)"
        )
    name = f"cgl-{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost {HOSTNAME}\n::1 localhost\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
