"""OCSP beside CRLs, against OpenSSL's own responder (`openssl ocsp -index ... -port`).

A TEST CA issues encryption certificates that name an OCSP responder (and, for one of them, a
CRL distribution point nobody serves). The validator must refuse a certificate whose declared
revocation information it cannot get, accept it with a good answer, refuse it when the
responder says revoked, keep using a fresh cached answer when the responder goes away, and
treat "responder unreachable, nothing cached" as temporary.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import subprocess
import time
from pathlib import Path

import pytest
from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp as ocsp_x
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from gateway.smime import errors as E
from gateway.smime.ocsp import OcspSource, http_post_ocsp, responders
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.trust import TrustStore, validate_recipient
from tests.conftest import free_port, require_tool

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")])


class OcspPki:
    """A TEST root that signs its own OCSP responses, and three leaves."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.url = f"http://127.0.0.1:{port}/"
        self.ca_key = rsa.generate_private_key(65537, 2048)
        self.ca = (x509.CertificateBuilder().subject_name(_name("TEST AC OCSP msgw"))
                   .issuer_name(_name("TEST AC OCSP msgw")).public_key(self.ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        self.good = self._leaf("good@ocsp.test")
        self.revoked = self._leaf("revoked@ocsp.test")
        self.with_dead_crl = self._leaf("crl-down@ocsp.test", crl_url=f"http://127.0.0.1:{free_port()}/ca.crl")
        (folder / "ca.pem").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        (folder / "ca.key").write_bytes(self.ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        stamp = (NOW + dt.timedelta(days=10)).strftime("%y%m%d%H%M%SZ")
        revoked_at = (NOW - dt.timedelta(hours=1)).strftime("%y%m%d%H%M%SZ")
        rows = [f"V\t{stamp}\t\t{self.good.serial_number:X}\tunknown\t/CN=good",
                f"R\t{stamp}\t{revoked_at}\t{self.revoked.serial_number:X}\tunknown\t/CN=revoked",
                f"V\t{stamp}\t\t{self.with_dead_crl.serial_number:X}\tunknown\t/CN=crl-down"]
        (folder / "index.txt").write_text("\n".join(rows) + "\n")
        self.trust = TrustStore((self.ca,))

    def _leaf(self, email: str, crl_url: str | None = None) -> x509.Certificate:
        key = rsa.generate_private_key(65537, 2048)
        b = (x509.CertificateBuilder().subject_name(_name(email)).issuer_name(self.ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW - dt.timedelta(hours=2)).not_valid_after(NOW + dt.timedelta(days=10))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
             .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
             .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                 AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.url))]), critical=False))
        if crl_url:
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
        return b.sign(self.ca_key, hashes.SHA256())


class Responder:
    """`openssl ocsp` answering from index.txt, responses signed by the CA, valid 10 minutes."""

    def __init__(self, pki: OcspPki, port: int) -> None:
        self.pki, self.port = pki, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Responder:
        openssl = require_tool("openssl")
        f = self.pki.folder
        self.proc = subprocess.Popen(
            [openssl, "ocsp", "-index", str(f / "index.txt"), "-port", str(self.port), "-CA", str(f / "ca.pem"),
             "-rsigner", str(f / "ca.pem"), "-rkey", str(f / "ca.key"), "-nmin", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Wait for its "waiting for OCSP client connections" line: a probe connection would wedge
        # this single-threaded responder (it waits for a request on it).
        assert self.proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 10
        while b"waiting for OCSP client" not in seen:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise AssertionError(f"openssl ocsp did not start: {seen!r}")
            seen += chunk
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    port = free_port()
    pki = OcspPki(tmp_path_factory.mktemp("ocsp"), port)
    responder = Responder(pki, port).start()
    yield pki, responder
    responder.stop()


async def test_declared_ocsp_without_an_answer_is_refused(setup) -> None:
    pki, _ = setup
    assert responders(pki.good) == [pki.url]
    with pytest.raises(E.RevocationUnavailable):
        await validate_recipient(pki.good, "good@ocsp.test", trust=pki.trust, crls=CrlSource())


async def test_good_and_revoked_answers_from_openssl(setup) -> None:
    pki, _ = setup
    ocsp = OcspSource()
    result = await validate_recipient(pki.good, "good@ocsp.test", trust=pki.trust, crls=CrlSource(), ocsp=ocsp)
    assert result.chain[0] == pki.good
    with pytest.raises(E.CertificateRevoked):
        await validate_recipient(pki.revoked, "revoked@ocsp.test", trust=pki.trust, crls=CrlSource(), ocsp=ocsp)


async def test_a_good_answer_replaces_a_crl_that_cannot_be_downloaded(setup) -> None:
    pki, _ = setup
    with pytest.raises(E.RevocationUnavailable) as err:  # CRL only: its distribution point is down
        await validate_recipient(pki.with_dead_crl, None, trust=pki.trust, crls=CrlSource(fetcher=http_fetch))
    assert err.value.temporary
    await validate_recipient(pki.with_dead_crl, None, trust=pki.trust, crls=CrlSource(fetcher=http_fetch),
                             ocsp=OcspSource())


async def test_cached_answer_when_the_responder_is_gone_then_temporary(setup) -> None:
    pki, responder = setup
    cached = OcspSource()
    await validate_recipient(pki.good, None, trust=pki.trust, crls=CrlSource(), ocsp=cached)
    responder.stop()
    try:
        await validate_recipient(pki.good, None, trust=pki.trust, crls=CrlSource(), ocsp=cached)  # nextUpdate ahead
        with pytest.raises(E.RevocationUnavailable) as err:
            await validate_recipient(pki.good, None, trust=pki.trust, crls=CrlSource(), ocsp=OcspSource())
        assert err.value.temporary  # the responder is down: try again later, do not bounce
    finally:
        responder.start()


def _signed_answer(pki: OcspPki, cert: x509.Certificate, status: ocsp_x.OCSPCertStatus) -> bytes:
    """An OCSP answer really signed by the CA (e.g. a "good" captured before the revocation)."""
    return (ocsp_x.OCSPResponseBuilder()
            .add_response(cert=cert, issuer=pki.ca, algorithm=hashes.SHA1(), cert_status=status,  # noqa: S303
                          this_update=NOW - dt.timedelta(minutes=5), next_update=NOW + dt.timedelta(hours=1),
                          revocation_time=None, revocation_reason=None)
            .responder_id(ocsp_x.OCSPResponderEncoding.HASH, pki.ca)
            .sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


async def test_a_forged_certificate_cannot_plant_an_answer_for_a_real_one(setup) -> None:
    """The forged certificate copies the revoked one's issuer name and serial and names its own
    responder, which replays a genuine old "good" answer: that answer must not be used later for
    the real (revoked) certificate."""
    pki, _ = setup
    attacker_url = "http://127.0.0.1:9/attacker"
    key = rsa.generate_private_key(65537, 2048)
    forged = (x509.CertificateBuilder().subject_name(pki.revoked.subject).issuer_name(pki.ca.subject)
              .public_key(key.public_key()).serial_number(pki.revoked.serial_number)
              .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=1))
              .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                  AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(attacker_url))]), critical=False)
              .sign(key, hashes.SHA256()))
    replayed = _signed_answer(pki, pki.revoked, ocsp_x.OCSPCertStatus.GOOD)

    async def fetcher(url: str, request: bytes) -> bytes:
        return replayed if url == attacker_url else await http_post_ocsp(url, request)

    source = OcspSource(fetcher)
    with pytest.raises(E.CertificateRefused):
        await validate_recipient(forged, None, trust=pki.trust, crls=CrlSource(), ocsp=source)
    with pytest.raises(E.CertificateRevoked):
        await validate_recipient(pki.revoked, None, trust=pki.trust, crls=CrlSource(), ocsp=source)


async def test_answers_about_other_certificates_are_not_kept(setup) -> None:
    """A responder answering about another certificate, or saying tryLater, is a failed request
    (missing revocation data is then temporary), never an untyped error."""
    pki, _ = setup
    other = _signed_answer(pki, pki.with_dead_crl, ocsp_x.OCSPCertStatus.GOOD)
    for answer in (other, b"\x30\x03\x0a\x01\x03"):  # the second: tryLater
        async def fetcher(url: str, request: bytes, answer: bytes = answer) -> bytes:
            return answer

        source = OcspSource(fetcher)
        assert await source.responses_and_failures([pki.good, pki.ca]) == ([], 1)
        with pytest.raises(E.RevocationUnavailable) as err:
            await validate_recipient(pki.good, None, trust=pki.trust, crls=CrlSource(), ocsp=source)
        assert err.value.temporary


async def test_an_answer_with_several_single_responses(setup) -> None:
    """Found in review: reading nextUpdate of a response with two SingleResponses raised an
    untyped ValueError. The one about our certificate is used."""
    pki, _ = setup
    parsed = aocsp.OCSPResponse.load(_signed_answer(pki, pki.good, ocsp_x.OCSPCertStatus.GOOD))
    basic = parsed["response_bytes"]["response"].parsed
    mine = basic["tbs_response_data"]["responses"][0]
    basic["tbs_response_data"]["responses"] = aocsp.Responses([mine.copy(), mine.copy()])
    basic["signature"] = pki.ca_key.sign(basic["tbs_response_data"].dump(force=True), padding.PKCS1v15(),
                                         hashes.SHA256())
    two = aocsp.OCSPResponse({"response_status": "successful", "response_bytes": {
        "response_type": "basic_ocsp_response", "response": basic}}).dump(force=True)

    async def fetcher(url: str, request: bytes) -> bytes:
        return two

    source = OcspSource(fetcher)
    assert await source.responses_and_failures([pki.good, pki.ca]) == ([two], 0)
    await validate_recipient(pki.good, None, trust=pki.trust, crls=CrlSource(), ocsp=source)


def test_config_switch(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config
    from tests.e2e.harness import write_config

    trust = tmp_path / "trust"
    trust.mkdir()
    off = write_config(tmp_path / "off", sink_port=2525, extra=f'[trust]\nanchors = "{trust}"\n')
    assert load_config(off.config).trust.ocsp is False  # CRLs only unless asked
    on = write_config(tmp_path / "on", sink_port=2525, extra=f'[trust]\nanchors = "{trust}"\nocsp = true\n')
    assert load_config(on.config).trust.ocsp is True
    bad = write_config(tmp_path / "bad", sink_port=2525, extra=f'[trust]\nanchors = "{trust}"\nocsp = "yes"\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad.config)
    assert any(key == "trust.ocsp" for _src, key, _msg in err.value.problems)
