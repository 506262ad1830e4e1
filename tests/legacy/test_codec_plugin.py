"""A legacy codec declares its display name, its own config keys and its key store.

The ToyCrypt codec below is the worked example of docs/architecture.md: registered (in a real
deployment, by being a module of gateway/legacy/ with ``CODEC = ...``), its ``[legacy.toycrypt]``
section is read and checked as it declares, the bridge opens its key store, the provenance
banner names it and `msgw legacy` offers it, with no edit to config, stages or commands.
"""

from __future__ import annotations

import argparse
import base64
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.commands import legacy as command
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.legacy import codec as registry
from gateway.legacy.apicrypt1 import CODEC as APICRYPT1
from gateway.legacy.codec import CodecOption, DecodedMessage, EncodedFile, LegacyCodec, MessageInput, as_message
from gateway.legacy.keystore import ApicryptKeyStore
from gateway.legacy.openpgp import CODEC as OPENPGP
from gateway.legacy.openpgp import OpenPgpKeyring
from gateway.smime.testpki import TestPKI
from gateway.stages.banner import banner_lines
from gateway.stages.build import GatewayContext
from tests.smime.support import shared_pki

ARMOR = b"-----TOYCRYPT-----\r\n"


@dataclass(frozen=True)
class ToyKeys:
    folder: Path
    identity: str | None
    rounds: int


class ToyCodec:
    """Not encryption: base64 behind a marker, enough to show where a codec plugs in."""

    name = "toycrypt"
    display_name = "ToyCrypt"
    config_fields = (CodecOption("rounds", "int", "toycrypt: encoding rounds"),
                     CodecOption("pin_file", "path", "toycrypt: file holding the card PIN", must_exist=True))
    keys_option = "toy-keys"
    keys_help = "toycrypt: key folder"
    encode_options = (CodecOption("armor_only", "bool", "toycrypt: bare armor, no MIME"),)

    def open_keys(self, keys_path: str | Path, identity: str | None, options: Mapping[str, Any]) -> ToyKeys:
        return ToyKeys(Path(keys_path), identity, int(options.get("rounds", 1)))

    def detect(self, message: MessageInput) -> bool:
        return isinstance(message, bytes) and message.startswith(ARMOR)

    def decode(self, message: MessageInput, keys: ToyKeys, *, recipient: str | None = None) -> DecodedMessage:
        data = bytes(message) if isinstance(message, bytes) else as_message(message).as_bytes()
        body = data[len(ARMOR):]
        for _ in range(keys.rounds):
            body = base64.b64decode(body)
        return DecodedMessage(codec=self.name, content=body, sender=None, recipients=(), sender_authenticated=False,
                              notes=("toycrypt: no authentication",))

    def encode(self, mime: bytes, sender: str, recipients: Sequence[str], keys: ToyKeys, *,
               protect_headers: bool = False) -> bytes:
        for _ in range(keys.rounds):
            mime = base64.b64encode(mime)
        return ARMOR + mime

    def encode_file(self, data: bytes, sender: str, recipients: Sequence[str], keys: ToyKeys,
                    options: Mapping[str, Any]) -> EncodedFile:
        return EncodedFile(self.encode(data, sender, recipients, keys), ("toycrypt is not encryption",))


@pytest.fixture
def toy() -> Iterator[ToyCodec]:
    codec = ToyCodec()
    registry.register(codec)  # type: ignore[arg-type]
    try:
        yield codec
    finally:
        registry.unregister(codec.name)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _config(folder: Path, pki: TestPKI, legacy: str) -> str:
    return f"""
[listeners.relay]
kind = "relay"
port = 0

[spool]
path = "{folder / 'spool'}"

[local]
domains = ["labo-tests.sante.test"]

[trust]
anchors = "{pki.trust_dir}"
fetch_crls = false

[policy]
default = "require-smime"

{legacy}
"""


def msgw(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="msgw")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_builtin_codecs_declare_their_name_fields_and_key_stores(tmp_path: Path) -> None:
    assert (APICRYPT1.display_name, OPENPGP.display_name) == ("Apicrypt", "OpenPGP")
    assert APICRYPT1.config_fields == ()
    assert [(f.name, f.kind, f.must_exist) for f in OPENPGP.config_fields] == [
        ("passphrase_file", "path", True), ("passphrase_env", "str", False)]
    for codec in (APICRYPT1, OPENPGP):
        assert isinstance(codec, LegacyCodec)
    store = APICRYPT1.open_keys(tmp_path, "msgw.bridge", {})
    assert isinstance(store, ApicryptKeyStore) and store.folder == tmp_path and store.identities == ("msgw.bridge",)
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    ring = OPENPGP.open_keys(tmp_path, "bridge@x.test", {"passphrase_file": secret})
    assert isinstance(ring, OpenPgpKeyring) and ring.identities == ("bridge@x.test",) and ring.passphrase() == "s3cret"
    assert banner_lines("openpgp", True)[1].endswith("authenticated by its OpenPGP signature.")


def test_openpgp_fields_are_read_from_its_section(tmp_path: Path, pki: TestPKI) -> None:
    (tmp_path / "ring").mkdir()
    (tmp_path / "pass").write_text("x\n")
    section = f'[legacy.openpgp]\nkeys = "{tmp_path / "ring"}"\nidentity = "b@x.test"\npassphrase_file = "pass"\n'
    cfg = parse_config(tomllib.loads(_config(tmp_path, pki, section)), source="t.toml", base=tmp_path)
    assert cfg.legacy is not None
    assert dict(cfg.legacy.codec("openpgp").options) == {"passphrase_file": tmp_path / "pass"}  # type: ignore[union-attr]
    ctx = GatewayContext(cfg)
    try:
        ring = ctx.legacy_keys("openpgp")
        assert isinstance(ring, OpenPgpKeyring) and ring.passphrase() == "x" and ring.identities == ("b@x.test",)
    finally:
        ctx.close()
    with pytest.raises(ConfigError, match=r"legacy\.openpgp\.passphrase_file: file not found"):
        parse_config(tomllib.loads(_config(tmp_path, pki, section.replace('"pass"', '"missing"'))),
                     source="t.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"legacy\.apicrypt1\.passphrase_env: unknown key"):
        parse_config(tomllib.loads(_config(tmp_path, pki, f'[legacy.apicrypt1]\nkeys = "{tmp_path}"\n'
                                                          'identity = "b"\npassphrase_env = "X"\n')),
                     source="t.toml", base=tmp_path)


def test_a_new_codec_is_configured_opened_and_named_from_its_own_module(toy: ToyCodec, tmp_path: Path,
                                                                       pki: TestPKI) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "pin").write_text("1234\n")
    section = '[legacy.toycrypt]\nkeys = "toy"\nidentity = "msgw.bridge"\nrounds = 2\npin_file = "pin"\n'
    cfg = parse_config(tomllib.loads(_config(tmp_path, pki, section)), source="t.toml", base=tmp_path)
    assert cfg.legacy is not None
    toycfg = cfg.legacy.codec("toycrypt")
    assert toycfg is not None and dict(toycfg.options) == {"rounds": 2, "pin_file": tmp_path / "pin"}
    ctx = GatewayContext(cfg)
    try:
        assert ctx.legacy_keys("toycrypt") == ToyKeys(tmp_path / "toy", "msgw.bridge", 2)
        assert ctx.legacy_identity("toycrypt") == "msgw.bridge"
    finally:
        ctx.close()
    assert banner_lines("toycrypt", False)[1].startswith("Received from a legacy encrypted mail system (ToyCrypt)")

    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(_config(tmp_path, pki, section.replace("rounds = 2", 'rounds = "two"\nsign = 1'))),
                     source="t.toml", base=tmp_path)
    assert "legacy.toycrypt.rounds: expected an integer, got str" in str(err.value)
    assert "legacy.toycrypt.sign: unknown key" in str(err.value)


def test_a_new_codec_is_offered_by_msgw_legacy(toy: ToyCodec, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    assert msgw("legacy", "encode", "--codec", "toycrypt", "--toy-keys", str(tmp_path), "--rounds", "3",
                "--user", "a", "--to", "b", "--in", str(tmp_path / "in.eml"), "--out", str(tmp_path / "enc")) == 0
    assert "msgw legacy: warning: toycrypt is not encryption" in capsys.readouterr().err
    assert msgw("legacy", "decode", "--codec", "toycrypt", "--toy-keys", str(tmp_path), "--rounds", "3",
                "--user", "a", "--in", str(tmp_path / "enc"), "--out", str(tmp_path / "dec")) == 0
    assert (tmp_path / "dec").read_bytes() == b"Subject: x\r\n\r\nbody\r\n"
    assert msgw("legacy", "decode", "--codec", "toycrypt", "--user", "a", "--in", str(tmp_path / "enc"),
                "--out", str(tmp_path / "dec")) == 2
    assert "--toy-keys DIR is required with --codec toycrypt" in capsys.readouterr().err


def test_an_option_of_another_codec_is_bad_usage(keydir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    common = ("--user", "labo.bio", "--to", "dr.martin", "--in", str(tmp_path / "in.eml"), "--out", str(tmp_path / "o"))
    assert msgw("legacy", "encode", "--codec", "openpgp", "--keyring", str(tmp_path), "--raw", *common) == 2
    assert "--raw applies to --codec apicrypt1 only" in capsys.readouterr().err
    assert msgw("legacy", "encode", "--codec", "apicrypt1", "--keys", str(keydir), "--sign-only", *common) == 2
    assert "--sign-only applies to --codec openpgp only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
