"""Random-mutation fuzz loops: every reader raises only PayloadError (or subclasses), never anything else."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

import pytest

from gateway.routing.cda import read_cda
from gateway.routing.hl7 import MLLPDecoder, build_ack, mllp_frame, read_hl7
from gateway.routing.hprim import read_hprim
from gateway.routing.model import PayloadError
from gateway.routing.payload import read_payload
from gateway.routing.xdm import XdmDocument, build_xdm, read_xdm

from . import fixtures as fx

ROUNDS = 1500
SPECIALS = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"A|", b"<", b">", b"\x00", b"\xff", b"\xc3", b"****FIN****",
            b"\\X", b"MSH|", b"\x0b", b"\x1c", b"&#0;", b"<!DOCTYPE"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            del buf[pos:pos + rng.randint(1, 40)]
        elif op == 2:
            buf[pos:pos] = rng.choice(SPECIALS)
        elif op == 3:
            buf = buf[:pos]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start:start + rng.randint(1, 60)]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def _fuzz(reader: Callable[[bytes], object], seeds: list[bytes], seed: int) -> int:
    rng = random.Random(seed)
    ok = 0
    for n in range(ROUNDS):
        data = mutate(seeds[n % len(seeds)], rng)
        try:
            reader(data)
            ok += 1
        except PayloadError:
            pass
    return ok


def test_fuzz_hprim() -> None:
    seeds = [fx.hprim_net(), fx.hprim_net("^~\\&", encoding="utf-8"), fx.hprim_medecin(),
             fx.hprim_medecin(two_reports=True, encoding="utf-8")]
    _fuzz(read_hprim, seeds, 1)


def test_fuzz_hl7() -> None:
    small_cda = fx.cda()
    seeds = [fx.oru(cda_bytes=small_cda), fx.mdm(), fx.oru(charset="8859/1", encoding="iso-8859-1")]
    _fuzz(read_hl7, seeds, 2)


def test_fuzz_ack_never_fails() -> None:
    rng = random.Random(3)
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for _ in range(ROUNDS):
        ack = build_ack(mutate(fx.oru(), rng), rng.choice(["AA", "AE", "AR"]), rng.choice([None, "err|^~\\&"]),
                        now=now)
        assert ack.startswith(b"MSH")


def test_fuzz_cda() -> None:
    seeds = [fx.cda(), fx.cda(code="34133-9", recipients=2, version=2, replaces="1.2.3"), fx.cda(nonxml=True)]
    _fuzz(read_cda, seeds, 4)


def test_fuzz_xdm() -> None:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    doc = fx.cda()
    package = build_xdm([XdmDocument(doc, read_cda(doc))], source_id="1.2.3", now=now)
    _fuzz(read_xdm, [package], 5)


def test_fuzz_dispatcher() -> None:
    seeds = [fx.hprim_net(), fx.hprim_medecin(), fx.oru(), fx.cda(), b"%PDF-1.4\n%%EOF\n"]
    _fuzz(read_payload, seeds, 6)


@pytest.mark.parametrize("seed", [7, 8])
def test_fuzz_mllp(seed: int) -> None:
    rng = random.Random(seed)
    stream = mllp_frame(fx.mdm()) + mllp_frame(fx.oru())
    for _ in range(ROUNDS):
        data = mutate(stream, rng)
        dec = MLLPDecoder(max_frame=len(stream))
        try:
            cut = rng.randrange(len(data) + 1)
            dec.feed(data[:cut])
            dec.feed(data[cut:])
        except PayloadError:
            pass
