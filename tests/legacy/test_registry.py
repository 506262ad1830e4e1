"""The codec registry: discovery of format modules, lookup, detection; the legacy package stays SMTP-free."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.errors import PermanentError
from gateway.legacy import DecodedMessage, LegacyCodec, detect_codec, get, names, register
from gateway.legacy.errors import UnknownCodec


def test_builtin_codecs_are_discovered() -> None:
    assert {"apicrypt1", "openpgp"} <= set(names())
    for name in ("apicrypt1", "openpgp"):
        codec = get(name)
        assert codec.name == name and isinstance(codec, LegacyCodec)


def test_unknown_codec_is_a_permanent_error() -> None:
    with pytest.raises(UnknownCodec, match="unknown legacy codec 'rot13'") as info:
        get("rot13")
    assert isinstance(info.value, PermanentError)


def test_a_second_codec_under_a_taken_name_is_refused() -> None:
    class Impostor:
        name = "apicrypt1"

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor())  # type: ignore[arg-type]


def test_plain_mail_is_no_legacy_format() -> None:
    assert detect_codec(b"From: a@b\r\nContent-Type: text/plain\r\n\r\nbonjour\r\n") is None
    assert detect_codec(b"\x00\xff garbage") is None


def test_decoded_message_is_frozen() -> None:
    decoded = DecodedMessage(codec="x", content=b"", sender=None, recipients=(), sender_authenticated=False,
                             notes=())
    with pytest.raises(AttributeError):
        decoded.sender = "forged"  # type: ignore[misc]


def test_legacy_package_imports_nothing_of_smime_routing_or_server() -> None:
    root = Path(__file__).resolve().parents[2] / "gateway" / "legacy"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert not module.startswith(("gateway.smime", "gateway.routing", "gateway.server",
                                              "gateway.delivery", "gateway.pipeline", "smtplib", "aiosmtp")), \
                    f"{path.name} imports {module}"


def test_provenance_line_is_header_safe() -> None:
    decoded = DecodedMessage(codec="apicrypt1", content=b"", sender="evil\r\nBcc: x@y; z", recipients=(),
                             sender_authenticated=False, notes=())
    line = decoded.provenance()
    assert "\r" not in line and "\n" not in line and line.count(";") == 4
    assert line.startswith("codec=apicrypt1; sender=evil__Bcc:_x@y__z; sender-authenticated=no; signature=")
