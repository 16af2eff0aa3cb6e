"""A throwaway certificate authority for the Kafka and Redis security tests, made with the
openssl CLI.

`make_pki` writes, in a folder: a CA, a second CA that signed nothing here
(the "unknown CA" a client must refuse), a server certificate for
127.0.0.1 and localhost signed by the first CA (PEM with its key, for
redis-server, and as a PKCS12 keystore for Kafka), and a client
certificate with its key. EC P-256 keys: a few
tenths of a second in all.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import in_ci

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """The files `make_pki` wrote."""

    ca: Path  # the CA certificate (PEM) that signed the server and client certificates
    other_ca: Path  # a CA certificate that signed nothing here
    server_keystore: Path  # PKCS12: the server's key and certificate chain
    keystore_password: str
    client_cert: Path
    client_key: Path
    server_cert: Path  # PEM, the same certificate as in server_keystore (redis-server's)
    server_key: Path  # PEM, unencrypted


def openssl_or_skip() -> None:
    """Skip the test without the openssl CLI; fail in CI, where it must run."""
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("the openssl command is needed in CI")
        pytest.skip("the openssl command is not on PATH")


def make_pki(folder: Path) -> Pki:
    """Write a CA, another CA, a server certificate (PEM and keystore) and a client
    certificate into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl(folder, "req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN=grader test {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.pem")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _signed(folder, "server", "/CN=127.0.0.1", "server.ext")
    _signed(folder, "client", "/CN=grader", None)
    password = secrets.token_hex(8)
    _openssl(folder, "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key",
             "-certfile", "ca.pem", "-name", "kafka", "-out", "server.p12",
             "-passout", f"pass:{password}")
    return Pki(folder / "ca.pem", folder / "other-ca.pem", folder / "server.p12", password,
               folder / "client.pem", folder / "client.key", folder / "server.pem",
               folder / "server.key")


def _signed(folder: Path, name: str, subject: str, extensions: str | None) -> None:
    """``name``.key and ``name``.pem, a certificate signed by ca.pem."""
    _openssl(folder, "req", *EC_KEY, "-subj", subject, "-keyout", f"{name}.key",
             "-out", f"{name}.csr")
    extra = ["-extfile", extensions] if extensions else []
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", *extra, "-out", f"{name}.pem")


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")
