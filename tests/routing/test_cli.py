"""`msgw directory …` through the installed console script, with a generated config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import MSGW
from tests.e2e.harness import write_config
from tests.routing.gen_extractions import rpps_number, write_mssante, write_rpps


def msgw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MSGW, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("dircli"), sink_port=2525).config


def test_import_and_lookup(config: Path, tmp_path: Path) -> None:
    f = write_mssante(tmp_path / "Extraction_Correspondance_MSSante.txt", 200,
                      extra_rows=["PER|not-an-address|8|" + rpps_number(999)])
    r = msgw("directory", "import", str(f), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "added 200" in r.stdout and "rejected 1" in r.stdout and "rows/s" in r.stdout
    assert "line 202: column 'Adresse BAL' is not a mail address" in r.stderr
    r = msgw("directory", "import", str(f), "--config", str(config), "--format", "mssante-extraction", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["added"], out["unchanged"], out["rejected"]) == (0, 200, 1)
    assert (config.parent / "directory.sqlite").exists()  # next to the spool folder

    r = msgw("directory", "lookup", rpps_number(7), "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    [c] = json.loads(r.stdout)
    assert c["entity"]["rpps"] == rpps_number(7)
    assert c["addresses"][0] == {"address": "p7@mssante.test", "capability": "trusted-domain", "mailbox_type": "PER",
                                 "key_ref": None, "source": "mssante-extraction", "certificates_sha256": []}
    r = msgw("directory", "lookup", "P7@MSSANTE.TEST", "--config", str(config))
    assert r.returncode == 0 and "p7@mssante.test" in r.stdout and "trusted-domain" in r.stdout
    r = msgw("directory", "lookup", "8" + rpps_number(7), "--config", str(config))
    assert r.returncode == 0 and rpps_number(7) in r.stdout
    r = msgw("directory", "lookup", "Arnoux", "--config", str(config), "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) >= 2
    r = msgw("directory", "lookup", "nobody@nowhere.test", "--config", str(config))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not found" in r.stderr


def test_import_rpps_autodetected(config: Path, tmp_path: Path) -> None:
    f = write_rpps(tmp_path / "PS_LibreAcces_Personne_activite.txt", 20, start=5000)
    r = msgw("directory", "import", str(f), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("rpps-extraction: added 20")


def test_bad_input_exits_2(config: Path, tmp_path: Path) -> None:
    r = msgw("directory", "import", str(tmp_path / "missing.txt"), "--config", str(config))
    assert r.returncode == 2 and r.stderr.startswith("msgw: ") and r.stderr.count("\n") == 1
    (tmp_path / "junk.txt").write_text("a|b\n1|2\n")
    r = msgw("directory", "import", str(tmp_path / "junk.txt"), "--config", str(config))
    assert r.returncode == 2 and "unknown file format" in r.stderr
    r = msgw("directory", "add", "x@msgw.test", "--capability", "smime", "--config", str(config))
    assert r.returncode == 2 and "certificate" in r.stderr
    r = msgw("directory", "add", "x@msgw.test", "--capability", "local", "--config", str(config))
    assert r.returncode == 2 and "key reference" in r.stderr
    (tmp_path / "notacert.pem").write_text("nothing")
    r = msgw("directory", "add", "x@msgw.test", "--capability", "smime", "--cert", str(tmp_path / "notacert.pem"),
             "--config", str(config))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_add_smime_and_local_then_remove(config: Path, tmp_path: Path, cert_pair) -> None:
    from cryptography import x509

    pem = b"".join(x509.load_der_x509_certificate(c).public_bytes(Encoding.PEM) for c in cert_pair)
    (tmp_path / "two.pem").write_bytes(pem)
    (tmp_path / "one.der").write_bytes(cert_pair[0])
    r = msgw("directory", "add", "Dr.Smime@Hopital.test", "--capability", "smime", "--cert", str(tmp_path / "two.pem"),
             "--cert", str(tmp_path / "one.der"), "--rpps", rpps_number(424242), "--last-name", "HOUDIN",
             "--config", str(config))
    assert r.returncode == 0, r.stderr
    r = msgw("directory", "lookup", rpps_number(424242), "--json", "--config", str(config))
    [c] = json.loads(r.stdout)
    assert c["addresses"][0]["capability"] == "smime" and len(c["addresses"][0]["certificates_sha256"]) == 2
    r = msgw("directory", "add", "secretariat@msgw.test", "--capability", "local", "--key-ref", "cabinet",
             "--mailbox-type", "ORG", "--organisation", "CABINET TEST", "--config", str(config))
    assert r.returncode == 0, r.stderr
    r = msgw("directory", "lookup", "secretariat@msgw.test", "--json", "--config", str(config))
    [c] = json.loads(r.stdout)
    assert c["entity"]["kind"] == "organisation" and c["addresses"][0]["key_ref"] == "cabinet"
    assert msgw("directory", "remove", "secretariat@msgw.test", "--config", str(config)).returncode == 0
    assert msgw("directory", "remove", "secretariat@msgw.test", "--config", str(config)).returncode == 1
    assert msgw("directory", "lookup", "secretariat@msgw.test", "--config", str(config)).returncode == 1


def test_add_without_identity_keeps_the_known_entity(config: Path, tmp_path: Path, cert_pair) -> None:
    f = write_mssante(tmp_path / "Extraction_Correspondance_MSSante.txt", 3, start=7000)
    assert msgw("directory", "import", str(f), "--config", str(config), "--source", "mssante-extraction:other",
                "--format", "mssante-extraction").returncode == 0
    (tmp_path / "c.der").write_bytes(cert_pair[1])
    r = msgw("directory", "add", "p7001@mssante.test", "--capability", "smime", "--cert", str(tmp_path / "c.der"),
             "--config", str(config))
    assert r.returncode == 0, r.stderr
    [c] = json.loads(msgw("directory", "lookup", rpps_number(7001), "--json", "--config", str(config)).stdout)
    assert c["addresses"][0]["capability"] == "smime" and c["addresses"][0]["source"] == "operator"
    assert c["addresses"][0]["mailbox_type"] == "PER"
