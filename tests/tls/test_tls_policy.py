"""TLS policy presets (issue 17, item 4) against an independent TLS peer: `openssl s_client`.

The scan offers each suite OpenSSL knows (`openssl ciphers -V ALL:COMPLEMENTOFALL`, TLS 1.3
ones by `-ciphersuites`), one at a time, to the SMTP submission listener (STARTTLS), the relay
listener (STARTTLS) and the MLLP listener (TLS from the first byte) of a gateway process, and
asserts the accepted set is exactly the preset's (those its certificate's key type can serve);
TLS 1.0 and 1.1 are refused everywhere. `msgw check` prints the presets and warns when a
certificate cannot serve one; a `required` delivery route speaks only its preset."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509

from gateway import tlspolicy
from gateway.config import load_config
from gateway.default_setup import prepare_default_files
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline
from gateway.runner import QueueService as DeliveryManager
from gateway.spool import RecipientState, Spool
from tests.conftest import free_port, require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, SinkHandler, make_message, msgw, wait_port, write_config
from tests.e2e.tlspki import TestCA

#: Every TLS 1.3 suite OpenSSL implements (the CCM ones are not in `openssl ciphers` by default).
TLS13_ALL = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
             "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")


def _catalogue(openssl: str) -> tuple[dict[str, int], list[str]]:
    """OpenSSL's whole suite list: {pre-TLS 1.3 name: IANA code}, and the TLS 1.3 names."""
    out = subprocess.run([openssl, "ciphers", "-V", "ALL:COMPLEMENTOFALL"], capture_output=True, text=True,
                         check=True).stdout
    tls12: dict[str, int] = {}
    tls13 = list(TLS13_ALL)
    for line in out.splitlines():
        code, _dash, name, protocol = line.split()[:4]
        if protocol == "TLSv1.3":
            if name not in tls13:
                tls13.append(name)
        else:
            high, low = code.split(",")
            tls12[name] = int(high, 16) << 8 | int(low, 16)
    assert len(tls12) > 50 and "ECDHE-RSA-AES128-SHA256" in tls12, "openssl ciphers listed too little"
    return tls12, tls13


async def _probe(openssl: str, port: int, starttls: bool, args: list[str], gate: asyncio.Semaphore) -> str | None:
    """The suite negotiated by one `openssl s_client` handshake, or None when it failed."""
    cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-brief",
           *(["-starttls", "smtp"] if starttls else []), *args]
    async with gate:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    found = re.search(r"^Ciphersuite: (\S+)", out.decode(errors="replace"), re.M)
    return found.group(1) if proc.returncode == 0 and found else None


async def _scan(openssl: str, port: int, starttls: bool, tls12: list[str], tls13: list[str]) -> dict[str, set[str]]:
    """What one listener accepts: suites (each offered alone) and old protocol versions."""
    gate = asyncio.Semaphore(4)
    # @SECLEVEL=0: the client may offer anything, so a refusal is the server's, never the client's.
    probes = {("suite", name): ["-tls1_2", "-cipher", f"{name}:@SECLEVEL=0"] for name in tls12}
    probes |= {("suite", name): ["-tls1_3", "-ciphersuites", name] for name in tls13}
    probes |= {("old", flag): [flag, "-cipher", "ALL:@SECLEVEL=0"] for flag in ("-tls1", "-tls1_1")}
    results = await asyncio.gather(*(_probe(openssl, port, starttls, args, gate) for args in probes.values()))
    accepted: dict[str, set[str]] = {"suite": set(), "old": set()}
    for (kind, name), negotiated in zip(probes, results, strict=True):
        if negotiated is not None:
            assert kind == "old" or negotiated == name, f"offered {name} alone, got {negotiated}"
            accepted[kind].add(name)
    return accepted


def _gateway(folder: Path, preset: str, relay_pair=None) -> tuple[GatewaySetup, int]:
    """A gateway whose submission, relay and MLLP listeners all use `preset` (RSA loopback
    certificate; `relay_pair` replaces the relay's)."""
    setup = write_config(folder, sink_port=free_port())
    mllp_port = free_port()
    text = setup.config.read_text().replace('tls_key = "tls-key.pem"\n',
                                            f'tls_key = "tls-key.pem"\ntls_policy = "{preset}"\n')
    if relay_pair is not None:
        text = text.replace(f'tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"\ntls_policy = "{preset}"\n'
                            'allowed_networks',
                            f'tls_cert = "{relay_pair.cert}"\ntls_key = "{relay_pair.key}"\n'
                            f'tls_policy = "{preset}"\nallowed_networks')
    text += f"""
[intake.mllp]
address = "127.0.0.1"
port = {mllp_port}
sender = "lis@msgw.test"
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
tls_policy = "{preset}"

[intake.routing]
unrouted_default = "secretariat@msgw.test"
"""
    setup.config.write_text(text)
    return setup, mllp_port


@pytest.mark.parametrize("preset", list(tlspolicy.PRESETS))
def test_tls_scan_of_the_listeners_shows_exactly_the_preset(tmp_path: Path, preset: str) -> None:
    openssl = require_tool("openssl")
    tls12, tls13 = _catalogue(openssl)
    # "compatible" serves both key types: its relay listener gets an ECDSA certificate.
    ecdsa = TestCA(tmp_path / "pki").issue("localhost", ecdsa=True) if preset == "compatible" else None
    setup, mllp_port = _gateway(tmp_path / "gw", preset, ecdsa)
    listeners = {"submission": (setup.submission_port, True, "RSA"),
                 "relay": (setup.relay_port, True, "ECDSA" if ecdsa else "RSA"),
                 "mllp": (mllp_port, False, "RSA")}
    with GatewayProcess(setup):
        wait_port(mllp_port)

        async def scan_all() -> list[dict[str, set[str]]]:
            return await asyncio.gather(*(_scan(openssl, port, starttls, list(tls12), tls13)
                                          for port, starttls, _kind in listeners.values()))

        scans = dict(zip(listeners, asyncio.run(scan_all()), strict=True))
    for name, (_port, _starttls, kind) in listeners.items():
        expected = {s.openssl for s in tlspolicy.preset(preset).servable(kind)}
        assert expected, "the preset serves nothing: the scan would prove nothing"
        assert scans[name]["suite"] == expected, f"{name} ({preset}, {kind} certificate)"
        assert scans[name]["old"] == set(), f"{name} accepted {scans[name]['old']}"


def test_presets_name_the_suites_openssl_knows_by_their_iana_codes() -> None:
    """The tables' IANA codes and names match OpenSSL's own list (an independent source), and
    the presets keep out what the issue bans."""
    tls12, _ = _catalogue(require_tool("openssl"))
    for preset in tlspolicy.PRESETS.values():
        for suite in preset.tls12:
            assert tls12[suite.openssl] == suite.code, suite
            assert suite.iana.startswith("TLS_ECDHE_")
            assert not re.search(r"NULL|EXPORT|RC4|3DES|DES|CAMELLIA|ARIA|DSS|PSK|SRP|CBC_SHA$", suite.iana), suite
    assert [s.code for s in tlspolicy.REF2_SUITES] == [0xC030, 0xC02F, 0xC028, 0xC027]  # ECO.1.1.3
    assert tlspolicy.preset("modern").tls12 == ()


def test_msgw_check_prints_the_presets_and_warns_about_an_ecdsa_certificate(tmp_path: Path) -> None:
    """An ECDSA certificate on the default preset (mssante-ref2, ECDHE-RSA suites only) leaves
    Référentiel #2 clients without a suite: a warning, not a failure."""
    ecdsa = TestCA(tmp_path / "pki").issue("localhost", ecdsa=True)
    setup = write_config(tmp_path / "gw", sink_port=free_port())
    text = setup.config.read_text().replace(
        'tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"\nmax_recipients',
        f'tls_cert = "{ecdsa.cert}"\ntls_key = "{ecdsa.key}"\nmax_recipients')
    setup.config.write_text(text.replace('tls_key = "tls-key.pem"\nallowed_networks',
                                         'tls_key = "tls-key.pem"\ntls_policy = "modern"\nallowed_networks'))
    out = msgw("check", "--config", str(setup.config))
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    assert out.returncode == 0, stderr
    src = str(setup.config)
    assert (f"{src}: listeners.submission.tls_policy: mssante-ref2 (TLS 1.2, TLS 1.3; ECDSA certificate): "
            "TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256 TLS_AES_128_GCM_SHA256 ECDHE-RSA-AES256-GCM-SHA384 "
            "ECDHE-RSA-AES128-GCM-SHA256 ECDHE-RSA-AES256-SHA384 ECDHE-RSA-AES128-SHA256") in stdout
    assert (f"{src}: listeners.relay.tls_policy: modern (TLS 1.3 only; RSA certificate): "
            "TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256 TLS_AES_128_GCM_SHA256\n") in stdout
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:") and "tls_cert" in line]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith(f"warning: {src}: listeners.submission.tls_cert: ")
    assert "ECDSA" in warnings[0] and "mssante-ref2" in warnings[0] and "TLS 1.2 clients" in warnings[0]


def test_certificate_problem_by_key_type(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    rsa_cert = x509.load_pem_x509_certificate(ca.issue("rsa.test").cert.read_bytes())
    ec_cert = x509.load_pem_x509_certificate(ca.issue("ec.test", ecdsa=True).cert.read_bytes())
    assert tlspolicy.key_type(rsa_cert) == "RSA" and tlspolicy.key_type(ec_cert) == "ECDSA"
    for name in tlspolicy.PRESETS:
        assert tlspolicy.certificate_problem(name, rsa_cert) is None
    assert tlspolicy.certificate_problem("mssante-ref2", ec_cert) is not None
    assert tlspolicy.certificate_problem("modern", ec_cert) is None
    assert tlspolicy.certificate_problem("compatible", ec_cert) is None


def test_test_tls_certificates_are_igc_sante_shaped_rsa(tmp_path: Path) -> None:
    """The TEST server certificate (tests, `msgw demo`) looks like an IGC-Santé SERV SSL one."""
    pair = TestCA(tmp_path / "pki").issue("mx.msgw.test")
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert tlspolicy.key_type(cert) == "RSA" and cert.public_key().key_size == 2048  # type: ignore[union-attr]
    attrs = [(a.oid._name, a.value) for a in cert.subject]
    assert [k for k, _ in attrs] == ["countryName", "organizationName", "organizationalUnitName", "commonName"]
    assert attrs[0][1] == "FR" and attrs[3][1] == "mx.msgw.test" and re.fullmatch(r"\d{15}", str(attrs[2][1]))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mx.msgw.test" in san.get_values_for_type(x509.DNSName)


def test_tls_policy_keys_are_checked_with_their_path(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", delivery=f'''tls_policy = "weak"
smarthost = "127.0.0.1:{free_port()}"

[delivery.routes."partner.example"]
host = "localhost"
tls_policy = "tls1"
''', extra='[intake.mllp]\nsender = "lis@msgw.test"\ntls_policy = "old"\n\n'
           '[intake.routing]\nunrouted_default = "secretariat@msgw.test"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(setup.config)
    keys = {key for _source, key, _message in caught.value.problems}
    assert {"delivery.tls_policy", 'delivery.routes."partner.example".tls_policy', "intake.mllp.tls_policy"} <= keys


def _tls_sink(pair, handler: SinkHandler, configure) -> Controller:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    configure(ctx)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=ctx, require_starttls=True)
    controller.start()
    return controller


def _ref2_tls12(ctx: ssl.SSLContext) -> None:
    tlspolicy.apply(ctx, "mssante-ref2")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # so the hop can only use an ECO.1.1.3 suite


def _off_preset(ctx: ssl.SSLContext) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-CHACHA20-POLY1305")  # strong, but not one of Référentiel #2's


def test_required_route_speaks_its_preset_and_defers_a_hop_without_it(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    ref2, off, off_for_compatible = SinkHandler(), SinkHandler(), SinkHandler()
    sinks = [_tls_sink(ca.issue("localhost"), ref2, _ref2_tls12),
             _tls_sink(ca.issue("localhost"), off, _off_preset),
             _tls_sink(ca.issue("localhost"), off_for_compatible, _off_preset)]
    try:
        routes = [("ref2.example", sinks[0].port, ""), ("offpreset.example", sinks[1].port, ""),
                  ("compatible.example", sinks[2].port, 'tls_policy = "compatible"\n')]
        delivery = f'tls = "none"\nsmarthost = "127.0.0.1:{free_port()}"\n' + "".join(
            f'\n[delivery.routes."{domain}"]\nhost = "localhost"\nport = {port}\ntls = "required"\n'
            f'ca_file = "{ca.ca_file}"\n{key}' for domain, port, key in routes)
        setup = write_config(tmp_path / "gw", delivery=delivery)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        rcpts = ["dr@ref2.example", "dr@offpreset.example", "dr@compatible.example"]
        msg = spool.accept("lab@lab.example", rcpts, make_message("lab@lab.example", rcpts[0], "s", "ref2"),
                           lifetime=3600)
        asyncio.run(DeliveryManager(config, spool, Pipeline()).run_once())
        assert [m.recipients for m in ref2.snapshot()] == [["dr@ref2.example"]]
        assert [m.recipients for m in off_for_compatible.snapshot()] == [["dr@compatible.example"]]
        assert off.snapshot() == [], "a required route spoke a suite outside its preset"
        state = {r.address: r for r in spool.get(msg).recipients}["dr@offpreset.example"]
        assert state.state is RecipientState.DEFERRED and state.last_status == "4.7.5"
        assert "TLS" in (state.last_error or "")
    finally:
        for sink in sinks:
            sink.stop()


def test_default_setup_replaces_an_older_ecdsa_loopback_pair(tmp_path: Path) -> None:
    """`msgw init`/`serve` on a folder made by an older msgw (ECDSA loopback pair): the pair is
    made again as RSA, so the default listeners can serve their mssante-ref2 preset."""
    folder = tmp_path / "var" / "default"
    folder.mkdir(parents=True)
    old = TestCA(tmp_path / "pki").issue("localhost", ecdsa=True)
    (folder / "tls-cert.pem").write_bytes(old.cert.read_bytes())
    (folder / "tls-key.pem").write_bytes(old.key.read_bytes())
    prepare_default_files(folder)
    cert = x509.load_pem_x509_certificate((folder / "tls-cert.pem").read_bytes())
    assert tlspolicy.key_type(cert) == "RSA"
    assert tlspolicy.certificate_problem(tlspolicy.DEFAULT, cert) is None
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(folder / "tls-cert.pem"), str(folder / "tls-key.pem"))  # the new key matches
