"""`[console]` and `[operators]`: every problem named with its key; `msgw console passwd`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.server.passwords import verify_password
from tests.conftest import MSGW
from tests.console.support import console_config


def problems(exc: ConfigError) -> dict[str, str]:
    return {key: message for _, key, message in exc.problems}


def test_no_console_table_means_no_console(tmp_path: Path) -> None:
    config = console_config(tmp_path)
    text = config.source and Path(config.source).read_text()
    start = text.index("[console]")
    Path(config.source).write_text(text[:start] + text[text.index("[operators"):])
    assert load_config(config.source).console.enabled is False


def test_console_problems_are_reported_with_their_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        console_config(tmp_path, console_extra='session_lifetime = "30d"\ntls_policy = "old"\nbogus = 1\n',
                       operators='[operators."bad name!"]\n[operators.bob]\n[operators.carol]\n'
                                 'certificate_fingerprint = "12:34"\n[operators.dave]\npassword_hash_file = "nope"\n')
    found = problems(caught.value)
    assert found["console.session_lifetime"] == "at most 7d"
    assert found["console.tls_policy"].startswith("must be one of")
    assert found["console.bogus"] == "unknown key"
    assert 'operators."bad name!"' in found
    assert found['operators."bob"'].startswith("needs password_hash_file")
    assert found['operators."carol".certificate_fingerprint'].startswith("expected the certificate's SHA-256")
    assert found['operators."dave".password_hash_file'].startswith("file not found")


def test_a_console_needs_tls_an_operator_and_a_client_ca_for_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        console_config(tmp_path, operators="")
    assert "operators" in problems(caught.value)
    with pytest.raises(ConfigError) as caught:
        console_config(tmp_path, operators='[operators.eve]\ncertificate_subject = "EVE"\n')
    assert problems(caught.value)["console.client_ca"].startswith("operators with a certificate need client_ca")
    config = console_config(tmp_path)
    text = Path(config.source).read_text().replace('[console]\naddress = "127.0.0.1"\nport = 0\n'
                                                   'tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"',
                                                   '[console]\nport = 0')
    Path(config.source).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config.source)
    assert problems(caught.value)["console.tls_cert"].startswith("the console is served over TLS only")


def test_a_clear_password_in_the_hash_file_is_refused(tmp_path: Path) -> None:
    config = console_config(tmp_path)
    (tmp_path / "alice.hash").write_text("hunter22\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config.source)
    assert problems(caught.value)['operators."alice".password_hash_file'].startswith("must hold an $argon2")


def test_msgw_console_passwd_writes_the_operators_hash_file(tmp_path: Path) -> None:
    config = console_config(tmp_path)
    target = tmp_path / "alice.hash"
    target.unlink()
    out = subprocess.run([MSGW, "console", "passwd", "alice", "--config", config.source],
                         input=b"a new operator password\n", capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    stored = target.read_text().strip()
    assert stored.startswith("$argon2id$") and verify_password(stored, "a new operator password")
    assert load_config(config.source).console.operator("alice") is not None
    short = subprocess.run([MSGW, "console", "passwd", "alice", "--config", config.source], input=b"short\n",
                           capture_output=True, timeout=60)
    assert short.returncode == 2 and b"at least 8" in short.stderr
    unknown = subprocess.run([MSGW, "console", "passwd", "mallory", "--config", config.source], input=b"x" * 12,
                             capture_output=True, timeout=60)
    assert unknown.returncode == 2 and b'no [operators."mallory"]' in unknown.stderr


def test_the_embedded_default_has_a_loopback_console_and_an_admin_operator(tmp_path: Path) -> None:
    from gateway.config import DEFAULT_FILES, load_default_config
    from gateway.default_setup import CONSOLE_PASSWORD, prepare_default_files

    prepare_default_files(tmp_path / DEFAULT_FILES)
    config = load_default_config(tmp_path)
    console = config.console
    assert (console.enabled, console.address, console.port) == (True, "127.0.0.1", 8587)
    assert console.tls_cert == tmp_path / DEFAULT_FILES / "tls-cert.pem"
    admin = console.operator("admin")
    assert admin is not None and config.account("admin") is None
    password_file = tmp_path / DEFAULT_FILES / CONSOLE_PASSWORD
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    password = password_file.read_text().strip()
    assert admin.password_hash.startswith("$argon2id$") and verify_password(admin.password_hash, password)
    assert password != (tmp_path / DEFAULT_FILES / "demo.password").read_text().strip()
    # made once: a second run keeps the operator's password
    prepare_default_files(tmp_path / DEFAULT_FILES)
    assert password_file.read_text().strip() == password
