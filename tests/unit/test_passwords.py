"""Password hashes for AUTH accounts: round trips, wrong passwords, garbage never raises."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys

import pytest

from gateway.commands import passwd
from gateway.server.passwords import SCRYPT_LN, SCRYPT_P, SCRYPT_R, hash_password, verify_password


@pytest.mark.parametrize("scheme", ["scrypt", "argon2"])
def test_round_trip(scheme: str) -> None:
    stored = hash_password("correct horse ☃", scheme)  # type: ignore[arg-type]
    assert verify_password(stored, "correct horse ☃")
    assert not verify_password(stored, "correct horse")
    assert not verify_password(stored, "")


def test_scrypt_format_is_self_describing() -> None:
    stored = hash_password("secret")
    match = re.fullmatch(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", stored)
    assert match is not None
    assert (int(match[1]), int(match[2]), int(match[3])) == (SCRYPT_LN, SCRYPT_R, SCRYPT_P)
    assert stored != hash_password("secret")  # fresh salt each time


def test_argon2_format() -> None:
    assert hash_password("secret", "argon2").startswith("$argon2id$")


def test_scrypt_with_other_parameters_still_verifies() -> None:
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=4, p=2, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    stored = f"$scrypt$ln=10,r=4,p=2${b64(salt)}${b64(digest)}"
    assert verify_password(stored, "pw")
    assert not verify_password(stored, "pW")


@pytest.mark.parametrize("stored", [
    "", "plain", "$scrypt$", "$scrypt$ln=14,r=8,p=1$", "$scrypt$ln=14,r=8,p=1$!!!$???",
    "$scrypt$ln=99,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # absurd cost: refused, not computed
    "$scrypt$ln=0,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
    "$scrypt$ln=10,r=8,p=1$$aGFzaGhhc2hoYXNoaGFzaA",
    "$scrypt$ln=10,r=8,p=1$c2FsdA$aGFz",  # hash too short
    "$argon2id$garbage", "$argon2id$v=19$m=65536,t=3,p=4$xx$yy", "$2b$12$abcdefghijklmnopqrstuv",
    "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "\x00\xff", "$scrypt$ln=10,r=8,p=1$c2FsdA$aGFzaA\n$extra",
])
def test_garbage_is_false_never_raises(stored: str) -> None:
    assert verify_password(stored, "password") is False


def test_non_string_inputs_are_false() -> None:
    assert verify_password(None, "x") is False  # type: ignore[arg-type]
    assert verify_password(hash_password("x"), None) is False  # type: ignore[arg-type]


def test_unencodable_password_is_false() -> None:
    for scheme in ("scrypt", "argon2"):
        assert verify_password(hash_password("x", scheme), "\ud800") is False  # type: ignore[arg-type]


def test_unknown_scheme_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("x", "md5")  # type: ignore[arg-type]


def test_passwd_command_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    passwd.register(parser.add_subparsers())
    args = parser.parse_args(["passwd", "--scheme", "argon2"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("$argon2id$")
    assert verify_password(out, "s3cret pass")


def test_passwd_command_refuses_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    passwd.register(parser.add_subparsers())
    args = parser.parse_args(["passwd"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert args.func(args) == 2


def test_passwd_command_in_subprocess() -> None:
    """End to end through a pipe (not a tty): the default scheme is scrypt."""
    code = ("import argparse,sys\nfrom gateway.commands import passwd\n"
            "p=argparse.ArgumentParser();passwd.register(p.add_subparsers())\n"
            "a=p.parse_args(['passwd']);sys.exit(a.func(a))")
    proc = subprocess.run([sys.executable, "-c", code], input="pipe-pw\n", capture_output=True,
                          text=True, timeout=60, check=True)
    assert verify_password(proc.stdout.strip(), "pipe-pw")
    assert proc.stdout.startswith("$scrypt$")
