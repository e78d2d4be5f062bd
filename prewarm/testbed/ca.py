"""Testbed certificate authority and edge server certificate, made with the ``openssl`` CLI.

The openssl command is used (not the ``cryptography`` package) because it is a system tool
like nginx and dnsmasq, so the testbed adds no Python dependency to the package.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prewarm.testbed.proc import TestbedError, find_binary


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the files one testbed start produces."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"openssl failed ({' '.join(args[:3])} ...): {proc.stderr.strip()}")


def _san_entry(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def make_tls(directory: Path, names: Iterable[str], label: str = "prewarm testbed") -> TlsFiles:
    """Create a fresh CA and a server certificate for ``names`` (DNS names or IPs) signed by it.

    A fresh CA per testbed means a client trusting one testbed never trusts another by accident.
    EC P-256 keys keep generation to a few milliseconds.
    """
    openssl = find_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "ca.key", directory / "server.pem",
                     directory / "server.key")
    sans: list[str] = []
    for name in names:
        entry = _san_entry(name)
        if entry not in sans:
            sans.append(entry)
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run([openssl, "req", "-x509", *ec, "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
          "-days", "30", "-subj", f"/CN={label} CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
    csr = directory / "server.csr"
    _run([openssl, "req", "-new", *ec, "-keyout", str(files.server_key), "-out", str(csr),
          "-subj", f"/CN={label} edge"], directory)
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
          "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(files.server_cert)],
         directory)
    for path in (files.ca_key, files.server_key):
        path.chmod(0o600)
    return files
