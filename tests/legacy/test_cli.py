"""`msgw legacy encode|decode`: the parser from register(), exit codes 0/1/2 and one-line reasons."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from gateway.commands import legacy as command
from tests.legacy.conftest import YEAR, GpgHome

MAIL = (b"From: labo.bio@medical44.apicrypt.org\r\nTo: dr.martin@medical44.apicrypt.org\r\nSubject: r\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nGlyc\xe9mie 5,2 mmol/l\r\n")


def msgw(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="msgw")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_apicrypt1_encode_decode(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, encoded, decoded = tmp_path / "in.eml", tmp_path / "enc.eml", tmp_path / "dec.eml"
    source.write_bytes(MAIL)
    assert msgw("legacy", "encode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "labo.bio",
                "--to", "dr.martin", "--to", "dr.durand", "--year", str(YEAR), "--in", str(source),
                "--out", str(encoded)) == 0
    assert b"#BINASCII1#" in encoded.read_bytes() and b"Glyc" not in encoded.read_bytes()
    assert msgw("legacy", "decode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "dr.durand",
                "--in", str(encoded), "--out", str(decoded), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sender"] == "labo.bio" and report["sender_authenticated"] is False
    assert report["recipients"] == ["dr.martin", "dr.durand"] and b"Z2x5Y" not in decoded.read_bytes()
    assert msgw("legacy", "decode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "dr.martin",
                "--in", str(encoded), "--out", str(decoded), "--require-signature") == 1
    assert "not authenticated" in capsys.readouterr().err


def test_apicrypt1_raw_mode(keydir: Path, tmp_path: Path) -> None:
    (tmp_path / "t.hpr").write_bytes(b"H|^~\\&|\rL|1\r")
    assert msgw("legacy", "encode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "labo.bio",
                "--to", "dr.martin", "--raw", "--year", str(YEAR), "--in", str(tmp_path / "t.hpr"),
                "--out", str(tmp_path / "t.apz")) == 0
    assert (tmp_path / "t.apz").read_bytes().startswith(b"#BINASCII1#\n")
    assert msgw("legacy", "decode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "dr.martin",
                "--in", str(tmp_path / "t.apz"), "--out", str(tmp_path / "t.eml")) == 0


def encoded_file(keydir: Path, tmp_path: Path) -> Path:
    (tmp_path / "in.eml").write_bytes(MAIL)
    assert msgw("legacy", "encode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", "labo.bio",
                "--to", "dr.martin", "--year", str(YEAR), "--in", str(tmp_path / "in.eml"),
                "--out", str(tmp_path / "enc.eml")) == 0
    return tmp_path / "enc.eml"


def decode(keydir: Path, path: Path, user: str = "dr.martin") -> int:
    return msgw("legacy", "decode", "--codec", "apicrypt1", "--keys", str(keydir), "--user", user,
                "--in", str(path), "--out", str(path.with_suffix(".out")))


def test_exit_codes(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = encoded_file(keydir, tmp_path)
    capsys.readouterr()
    assert decode(keydir, path, user="dr.durand") == 1  # not for us
    err = capsys.readouterr().err
    assert err.startswith("msgw legacy: ") and err.count("\n") == 1
    data = path.read_bytes()
    head, _, tail = data.rpartition(b"\r\n#ENDBINASCII1#")
    path.write_bytes(head[:-1] + (b"0" if head[-1:] != b"0" else b"1") + b"\r\n#ENDBINASCII1#" + tail)
    assert decode(keydir, path) == 1  # checksum mismatch: a "no"
    assert "checksum mismatch" in capsys.readouterr().err
    path.write_bytes(data.replace(b"#ENDBINASCII1#", b""))
    assert decode(keydir, path) == 2  # malformed armor: bad input
    assert "end marker" in capsys.readouterr().err
    path.write_bytes(data)
    os.chmod(keydir / "labo.bio.126", 0o644)
    assert decode(keydir, path) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert decode(keydir, tmp_path / "missing.eml") == 2
    assert msgw("legacy", "decode", "--codec", "apicrypt1", "--user", "x", "--in", str(path), "--out", "o") == 2
    assert "--keys DIR is required" in capsys.readouterr().err
    assert not path.with_suffix(".out").exists()


def test_bad_usage_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        msgw("legacy", "encode", "--codec", "apicrypt1", "--keys", "k", "--user", "u", "--in", "a", "--out", "b")
    assert info.value.code == 2  # --to is required
    with pytest.raises(SystemExit) as info:
        msgw("legacy", "decode", "--codec", "rot13", "--user", "u", "--in", "a", "--out", "b")
    assert info.value.code == 2


def test_registered_in_msgw() -> None:
    from gateway.cli import build_parser

    args = build_parser().parse_args(["legacy", "decode", "--codec", "openpgp", "--keyring", "k", "--user", "u",
                                      "--in", "a", "--out", "b"])
    assert args.legacy_command == "decode" and callable(args.func)


def test_openpgp_cli_round_trip(gpg_homes: dict[str, GpgHome], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    (tmp_path / "in.eml").write_bytes(MAIL)
    assert msgw("legacy", "encode", "--codec", "openpgp", "--keyring", str(bridge.home), "--user", bridge.email,
                "--to", partner.email, "--in", str(tmp_path / "in.eml"), "--out", str(tmp_path / "enc.eml")) == 0
    assert msgw("legacy", "decode", "--codec", "openpgp", "--keyring", str(partner.home), "--user", partner.email,
                "--in", str(tmp_path / "enc.eml"), "--out", str(tmp_path / "dec.eml"), "--json",
                "--require-signature") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sender_authenticated"] is True and report["signer_fingerprint"] == bridge.fingerprint
    assert (tmp_path / "dec.eml").read_bytes().endswith(b"Glyc\xe9mie 5,2 mmol/l\r\n")
    # the bridge cannot read what it encrypted for the partner: a "no"
    assert msgw("legacy", "decode", "--codec", "openpgp", "--keyring", str(bridge.home), "--user", bridge.email,
                "--in", str(tmp_path / "enc.eml"), "--out", str(tmp_path / "x.eml")) == 1
