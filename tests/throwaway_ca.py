"""A throw-away certificate authority and a broker certificate for 127.0.0.1, made with the openssl CLI.

Valid for two days, keys unencrypted: for tests of TLS clients against a local broker, nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThrowawayCertificates:
    ca: Path  # what clients trust (librdkafka's ssl.ca.location)
    broker_chain: Path  # the broker's certificate, then the CA's
    broker_key: Path  # PKCS#8, unencrypted


def issue_certificates(folder: Path) -> ThrowawayCertificates:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is needed to make the test's certificates"
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], cwd=folder, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"openssl {args[0]}: {result.stderr}"

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fleetwatch throw-away test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1")
    (folder / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "broker.ext", "-out", "broker.pem")  # fmt: skip
    chain = folder / "broker-chain.pem"
    chain.write_text((folder / "broker.pem").read_text() + (folder / "ca.pem").read_text())
    return ThrowawayCertificates(ca=folder / "ca.pem", broker_chain=chain, broker_key=folder / "broker.key")
