"""LdapSource against a real OpenLDAP slapd on loopback (temporary config and MDB database).

Needs the Debian packages `slapd` (slapd, slapadd) — required in CI, skipped elsewhere.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.directory.certdiscovery import CertificateDiscovery
from gateway.directory.certsources import DirectorySource, LdapSource
from tests.conftest import free_port, require_tool

from .conftest import Checker, Pki, der

BASE = "dc=example,dc=org"
ADMIN = f"cn=admin,{BASE}"
PASSWORD = "test-secret"


@dataclass
class Slapd:
    url: str
    port: int


def _config(workdir: Path) -> Path:
    conf = workdir / "slapd.conf"
    conf.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {workdir}/slapd.pid
database mdb
suffix "{BASE}"
rootdn "{ADMIN}"
rootpw {PASSWORD}
directory {workdir}/db
maxsize 10485760
""")
    (workdir / "db").mkdir()
    return conf


def _person(uid: str, mail: str, *certs: bytes) -> str:
    lines = [f"dn: uid={uid},ou=people,{BASE}", "objectClass: inetOrgPerson", f"uid: {uid}", f"cn: {uid}",
             f"sn: {uid}", f"mail: {mail}"]
    lines += [f"userCertificate;binary:: {base64.b64encode(c).decode()}" for c in certs]
    return "\n".join(lines) + "\n"


def _ldif(pki: Pki) -> str:
    entries = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
        _person("alice", "alice@example.org", der(pki.alice_sign), der(pki.alice)),
        _person("bob", "bob@example.org"),
        _person("carol", "carol@example.org", der(pki.alice_expired)),
    ]
    return "\n".join(entries)


def _wait_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("slapd did not start listening")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Slapd]:
    slapd_bin = require_tool("slapd")
    slapadd = require_tool("slapadd")
    workdir = tmp_path_factory.mktemp("slapd")
    conf = _config(workdir)
    ldif = workdir / "data.ldif"
    ldif.write_text(_ldif(pki))
    subprocess.run([slapadd, "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True, timeout=30)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    log = (workdir / "slapd.log").open("wb")
    # -d 0: stay in the foreground (so we own the process) without debug output
    proc = subprocess.Popen([slapd_bin, "-f", str(conf), "-h", f"{url}/", "-d", "0"], stdout=log, stderr=log)
    try:
        _wait_port(port, proc, time.monotonic() + 10)
        yield Slapd(url, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


async def test_entry_with_certificates(slapd: Slapd, pki: Pki) -> None:
    answer = await LdapSource(slapd.url, BASE).find("alice@example.org")
    assert sorted(c.serial_number for c in answer.certificates) == sorted(
        [pki.alice.serial_number, pki.alice_sign.serial_number])
    assert answer.note == f"ldap {slapd.url}: 2 certificates"
    assert not answer.failed


async def test_bound_search_and_no_entry_and_entry_without_certificate(slapd: Slapd, pki: Pki) -> None:
    source = LdapSource(slapd.url, BASE, bind_dn=ADMIN, password=PASSWORD)
    assert [c.serial_number for c in (await source.find("carol@example.org")).certificates] == [
        pki.alice_expired.serial_number]
    none = await source.find("dave@example.org")
    assert none.certificates == () and not none.failed
    assert none.note == f"ldap {slapd.url}: no entry for dave@example.org"
    bare = await source.find("bob@example.org")
    assert bare.certificates == () and not bare.failed
    assert bare.note == f"ldap {slapd.url}: entry for bob@example.org has no userCertificate;binary"


async def test_filter_value_is_escaped(slapd: Slapd) -> None:
    source = LdapSource(slapd.url, BASE)
    assert source.search_filter("*)(mail=*") == r"(mail=\2a\29\28mail=\2a)"
    for hostile in ("*", "*)(mail=*", "alice@example.org)(|(mail=*"):
        answer = await source.find(hostile)
        assert answer.certificates == () and not answer.failed, hostile
        assert "no entry for" in answer.note


async def test_bind_refused_and_unreachable_are_temporary(slapd: Slapd) -> None:
    refused = await LdapSource(slapd.url, BASE, bind_dn=ADMIN, password="wrong").find("alice@example.org")
    assert refused.failed and refused.note == f"ldap {slapd.url}: bind refused (invalidCredentials)"
    dead_url = f"ldap://127.0.0.1:{free_port()}"
    dead = await LdapSource(dead_url, BASE, timeout=1.0).find("alice@example.org")
    assert dead.failed and dead.note.startswith(f"ldap {dead_url}: unreachable (")


async def test_discovery_falls_through_directory_to_ldap(slapd: Slapd, pki: Pki, checker: Checker, clock) -> None:
    directory = DirectorySource(lambda address: [])
    discovery = CertificateDiscovery([directory, LdapSource(slapd.url, BASE)], checker, clock=clock)
    result = await discovery.find("alice@example.org")
    assert result.source == f"ldap {slapd.url}"
    assert [c.serial_number for c in result.certificates] == [pki.alice.serial_number]
    assert result.trace == ("directory: no certificate", f"ldap {slapd.url}: 2 certificates")
    assert [(r.serial, r.reason) for r in result.rejected] == [
        (format(pki.alice_sign.serial_number, "x"), "key usage does not allow key encipherment")]
