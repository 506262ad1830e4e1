"""`msgw smime ...` and `msgw certs show` as operators run them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import MSGW
from tests.smime.support import MESSAGE


def msgw(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSGW, *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


def test_sign_verify_encrypt_decrypt_roundtrip(pki, tmp_path: Path) -> None:
    src = tmp_path / "in.eml"
    src.write_bytes(MESSAGE)
    s, p = pki["person_sign"], pki["person_encrypt"]
    r = msgw("smime", "sign", "--cert", s.cert_path, "--key", s.key_path, "--chain", s.chain_path,
             "--in", src, "--out", tmp_path / "signed.eml")
    assert r.returncode == 0, r.stderr
    r = msgw("smime", "encrypt", "--recipient-cert", p.cert_path, "--recipient-cert", pki["org_encrypt"].cert_path,
             "--cipher", "aes256-gcm", "--key-transport", "oaep", "--in", tmp_path / "signed.eml",
             "--out", tmp_path / "enc.eml")
    assert r.returncode == 0, r.stderr
    pw = tmp_path / "pw"
    pw.write_text(pki.password)
    r = msgw("smime", "decrypt", "--key", p.p12_path, "--password-file", pw, "--in", tmp_path / "enc.eml",
             "--out", tmp_path / "dec.eml")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dec.eml").read_bytes() == (tmp_path / "signed.eml").read_bytes()
    r = msgw("smime", "verify", "--trust", pki.trust_dir, "--in", tmp_path / "dec.eml", "--out",
             tmp_path / "content.eml", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["signatures"][0]["rpps"] == "10101234567"
    assert out["signatures"][0]["revocation_status"] == "good"
    assert b"TEST body line two." in (tmp_path / "content.eml").read_bytes()


def test_verify_tampered_exits_1_with_one_line(pki, tmp_path: Path) -> None:
    src = tmp_path / "in.eml"
    src.write_bytes(MESSAGE)
    s = pki["person_sign"]
    assert msgw("smime", "sign", "--cert", s.cert_path, "--key", s.key_path, "--chain", s.chain_path,
                "--opaque", "--in", src, "--out", tmp_path / "s.eml").returncode == 0
    r = msgw("smime", "sign", "--cert", s.cert_path, "--key", s.key_path, "--chain", s.chain_path,
             "--in", src, "--out", tmp_path / "d.eml")
    assert r.returncode == 0
    tampered = (tmp_path / "d.eml").read_bytes().replace(b"line one", b"line 1!!")
    (tmp_path / "t.eml").write_bytes(tampered)
    r = msgw("smime", "verify", "--trust", pki.trust_dir, "--crl", pki.crl_dir / "root.crl",
             "--crl", pki.crl_dir / "persons.crl", "--no-network", "--in", tmp_path / "t.eml")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "digest does not match" in lines[0]
    r = msgw("smime", "verify", "--trust", pki.trust_dir, "--crl", pki.crl_dir / "root.crl",
             pki.crl_dir / "persons.crl", "--no-network", "--json", "--in", tmp_path / "t.eml")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"valid": False, "code": "smime-content-tampered", "temporary": False,
                                    "reason": "content digest does not match the signed messageDigest"}
    r = msgw("smime", "verify", "--trust", pki.trust_dir, "--crl", pki.crl_dir / "root.crl",
             pki.crl_dir / "persons.crl", "--no-network", "--in", tmp_path / "s.eml")
    assert r.returncode == 0, r.stderr  # the untampered opaque one verifies with CRL files only


def test_verify_bad_input_and_not_for_us(pki, tmp_path: Path) -> None:
    (tmp_path / "junk.eml").write_bytes(b"Content-Type: application/pkcs7-mime\r\n"
                                        b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n")
    r = msgw("smime", "verify", "--trust", pki.trust_dir, "--no-network", "--in", tmp_path / "junk.eml")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = msgw("smime", "verify", "--trust", tmp_path / "missing", "--in", tmp_path / "junk.eml")
    assert r.returncode == 2
    src = tmp_path / "in.eml"
    src.write_bytes(MESSAGE)
    assert msgw("smime", "encrypt", "--recipient-cert", pki["org_encrypt"].cert_path, "--in", src,
                "--out", tmp_path / "e.eml").returncode == 0
    e = pki["person_encrypt"]
    r = msgw("smime", "decrypt", "--cert", e.cert_path, "--key", e.key_path, "--in", tmp_path / "e.eml",
             "--out", tmp_path / "d.eml")
    assert r.returncode == 1 and "not encrypted for any key" in r.stderr


def test_certs_show(pki) -> None:
    r = msgw("certs", "show", pki["person_sign"].cert_path, "--json")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["rpps"] == "10101234567" and facts["profession"] == "Médecin"
    assert facts["key_usage"] == ["digital_signature", "content_commitment"]
    assert facts["validity"] == "valid"
    r = msgw("certs", "show", pki["expired"].cert_path)
    assert r.returncode == 0 and "validity: expired" in r.stdout
    r = msgw("certs", "show", "/nonexistent.pem")
    assert r.returncode == 2
