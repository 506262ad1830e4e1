"""A console over real TLS on a free loopback port, for the unit tests of tests/console/."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.default_setup import make_self_signed
from gateway.server.passwords import hash_password

OPERATOR = "alice"
OPERATOR_PASSWORD = "operator password 1"
MAIL_USER = "lis@lab.example"
MAIL_PASSWORD = "mail account password"


def console_config(folder: Path, *, extra: str = "", console_extra: str = "", operators: str | None = None,
                   max_failures: int = 3) -> GatewayConfig:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not cert.exists():
        cert_pem, key_pem = make_self_signed("localhost")
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
    (folder / "alice.hash").write_text(hash_password(OPERATOR_PASSWORD, "argon2") + "\n")
    if operators is None:
        operators = f'[operators.{OPERATOR}]\npassword_hash_file = "alice.hash"\n'
    text = textwrap.dedent(f"""
        [gateway]
        hostname = "msgw.test"
        workers = 1

        [listeners.submission]
        kind = "submission"
        address = "127.0.0.1"
        port = 0
        tls_cert = "tls-cert.pem"
        tls_key = "tls-key.pem"

        [accounts."{MAIL_USER}"]
        password_hash = "{hash_password(MAIL_PASSWORD, "argon2")}"

        [auth]
        max_failures = {max_failures}

        [spool]
        path = "spool"

        [local]
        domains = ["msgw.test"]
        maildir = "maildir"
        mailboxes = ["doctor@msgw.test"]

        [console]
        address = "127.0.0.1"
        port = 0
        tls_cert = "tls-cert.pem"
        tls_key = "tls-key.pem"
        """) + console_extra + "\n" + operators + "\n" + extra
    path = folder / "gateway.toml"
    path.write_text(text)
    return load_config(path)
