"""One raw-MIME module (`gateway.rawmime`): the S/MIME framing, the header allow-list, the legacy
codecs and the sender check read a header block the same way, and the shared helpers (and the
durable-file ones of `gateway.fsutil`) are defined once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.errors import MalformedInput
from gateway.legacy.mimeutil import raw_header_fields as legacy_fields
from gateway.rawmime import (
    field_name,
    header_end,
    header_fields,
    join_raw,
    line_ending,
    raw_body,
    raw_header_fields,
    split_raw,
    to_crlf,
)
from gateway.senders import header_fields as sender_fields
from gateway.smime.mime import split_message
from gateway.stages.headers import name_of
from gateway.stages.headers import split_raw as stage_split

MESSAGE = (b"Received: from lis.example\r\n\tby msgw.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
           b"From: Laboratoire <lab@labo.test>\r\nTo: dr@cabinet.test\r\n"
           b"Subject: =?utf-8?q?R=C3=A9sultat?=\r\n  (suite)\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nbody line\r\n\r\nsecond\r\n")
NAMES = ["received", "from", "to", "subject", "mime-version", "content-type"]

#: Helpers that must exist once (their module), not as a copy per package.
ONE_DEFINITION = {
    "gateway/rawmime.py": {"field_name", "name_of", "to_crlf", "split_raw", "join_raw", "raw_body",
                           "raw_header_fields", "header_fields", "raw_text", "header_text", "line_ending",
                           "_line_ending"},
    "gateway/fsutil.py": {"fsync_dir", "_fsync_dir", "write_atomic", "_write_file", "write_synced"},
}


def test_every_reader_sees_the_same_fields() -> None:
    fields, body = split_raw(MESSAGE)
    assert [field_name(f) for f in fields] == NAMES and join_raw(fields, body) == MESSAGE
    assert list(split_message(MESSAGE).names()) == NAMES
    assert [name_of(f) for f in stage_split(MESSAGE)[0]] == NAMES
    assert [n for n, _ in legacy_fields(MESSAGE)] == NAMES
    assert [n for n, _ in sender_fields(MESSAGE)] == NAMES
    assert dict(header_fields(MESSAGE))["subject"] == "=?utf-8?q?R=C3=A9sultat?= (suite)"
    assert split_message(MESSAGE).body == body == raw_body(MESSAGE) == b"body line\r\n\r\nsecond\r\n"


def test_lf_messages_and_line_ends() -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert [n for n, _ in raw_header_fields(lf)] == NAMES and raw_body(lf) == b"body line\n\nsecond\n"
    assert line_ending(lf) == b"\n" and line_ending(MESSAGE) == b"\r\n"
    assert header_end(b"no empty line") is None and raw_body(b"From: a@b\r\n") == b""
    # An HPRIM body keeps its CR line ends unless the caller says a bare CR is a line end too.
    assert to_crlf(b"H|a\rR|b\n") == b"H|a\rR|b\r\n"
    assert to_crlf(b"H|a\rR|b\n", bare_cr=True) == b"H|a\r\nR|b\r\n"


def test_the_strict_reader_refuses_what_others_would_skip() -> None:
    with pytest.raises(MalformedInput) as info:
        header_fields(b"From: a@b.test\r\nnot a field\r\n\r\nbody")
    assert info.value.where == "header line 2"
    assert [n for n, _ in raw_header_fields(b"From: a@b.test\r\nnot a field\r\n\r\nbody")] == ["from"]


@pytest.mark.parametrize("home", sorted(ONE_DEFINITION))
def test_shared_helpers_are_defined_once(home: str) -> None:
    root = Path(__file__).resolve().parents[2]
    copies = []
    for path in sorted((root / "gateway").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative == home:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in ONE_DEFINITION[home]:
                copies.append(f"{relative}:{node.lineno} {node.name}")
    assert copies == []
