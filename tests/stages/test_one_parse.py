"""One parse per message, and one thread hand-off from accept to prepared (issue 15, items 2 and 7).

Real stages on a real-key context (the TEST PKI), a real spool and runner; the `email` parser,
the header splitters and the thread pool are counted (wrapped, still called), never replaced, and
nothing of the cryptography is touched: what leaves is still opened and verified by the engine."""

from __future__ import annotations

import asyncio
import email
import email.feedparser
import functools
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway import rawmime
from gateway.config import load_config
from gateway.legacy import detect_codec
from gateway.pipeline import Envelope, Pipeline
from gateway.rawmime import MessageView, to_crlf
from gateway.runner import PipelineRunner
from gateway.smime import mime, protect
from gateway.smime.engine import Verifier, unwrap_message
from gateway.smime.revocation import CrlSource
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI, build_test_pki
from gateway.smime.trust import TrustStore
from gateway.spool import Spool
from gateway.stages.build import protection_stages
from tests.e2e.harness import write_config
from tests.stages.test_protection import Ctx, _key, _policy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_test_pki(tmp_path_factory.mktemp("pki"))


def _message(size: int = 1024, *, eight_bit: bool = False) -> bytes:
    head = (f"From: <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Resultat\r\n"
            "Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <p1@labo-tests.sante.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}"
            "\r\n\r\n").encode()
    line = ("HbA1c 6,1 % — résultat\r\n" if eight_bit else "HbA1c 6,1 % - resultat\r\n").encode()
    return head + line * max(1, (size - len(head)) // len(line))


@contextmanager
def _counting(*functions: Callable[..., Any], on: bytes | None = None) -> Iterator[Counter[str]]:
    """Count calls of `functions` wherever a gateway module bound them (optionally only the calls
    whose first argument is `on`), plus parser runs ("parse": every `email` parse makes one
    FeedParser) and thread-pool hand-offs ("hop": `to_thread` goes through `run_in_executor`;
    "hop <task name>": those made by one task, e.g. the runner's `prepare-<queue id>`)."""
    counts: Counter[str] = Counter()
    patches: list[tuple[Any, str, Any]] = []

    def wrap(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else None
            if on is None or (isinstance(first, bytes) and first == on):
                counts[name] += 1
            return fn(*args, **kwargs)
        return counted

    for fn in functions:
        counted = wrap(fn, fn.__name__)
        for module in [m for n, m in sys.modules.items() if n.startswith("gateway") and m is not None]:
            for attr, value in list(vars(module).items()):
                if value is fn:
                    patches.append((module, attr, value))
                    setattr(module, attr, counted)
    parser_init = email.feedparser.FeedParser.__init__
    executor = asyncio.BaseEventLoop.run_in_executor

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["parse"] += 1
        parser_init(self, *args, **kwargs)

    def hop(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["hop"] += 1
        task = asyncio.current_task()
        counts[f"hop {task.get_name() if task is not None else '-'}"] += 1
        return executor(self, *args, **kwargs)

    email.feedparser.FeedParser.__init__ = init  # type: ignore[method-assign]
    asyncio.BaseEventLoop.run_in_executor = hop  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        email.feedparser.FeedParser.__init__ = parser_init  # type: ignore[method-assign]
        asyncio.BaseEventLoop.run_in_executor = executor  # type: ignore[method-assign]
        for module, attr, value in patches:
            setattr(module, attr, value)


def _env() -> Envelope:
    return Envelope("Q1", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="relay")


async def _opened(pki: TestPKI, sent: bytes) -> bytes:
    """What the doctor reads: decrypted with his key, the signature verified by the engine."""
    verifier = Verifier(TrustStore.from_directory(pki.trust_dir), CrlSource(files=pki.crl_paths))
    result = await unwrap_message(sent, keys=[_key(pki, "person_encrypt")], verifier=verifier)
    assert result.encrypted and result.signed, result.layers  # a signature that does not verify raises
    return result.message


@pytest.mark.parametrize("eight_bit", [False, True], ids=["7bit", "8bit"])
async def test_the_protection_stages_parse_a_message_once(pki: TestPKI, eight_bit: bool) -> None:
    """The legacy detector, the classifier and the content extraction share one split of each
    kind and at most one parse: an ordinary message needs none (the legacy pre-scan rules armour
    out and the classifier reads the Content-Type from the bytes, issue 15); an 8-bit body has
    the re-encoding's own parse (it changes its tree)."""
    data = _message(eight_bit=eight_bit)
    pipeline = Pipeline(protection_stages(Ctx(pki, _policy(sender_copy=False))))
    with _counting(rawmime.split_raw, mime.split_message, on=data) as counts:
        result = await pipeline.run(_env(), data)
    assert [o.form for o in result.outgoing] == ["smime"] and not result.refusals
    assert counts["parse"] == (1 if eight_bit else 0), counts
    assert counts["split_raw"] == 1 and counts["split_message"] == 1, counts
    opened = email.message_from_bytes(await _opened(pki, result.outgoing[0].data))
    assert opened.get_payload(decode=True) == data.split(b"\r\n\r\n", 1)[1]


def test_the_legacy_detector_parses_once_for_every_codec() -> None:
    """A message the pre-scan cannot rule out (a base64 part) is parsed once for every codec; an
    ordinary one not at all."""
    assert _counted_detection(_message()) == 0
    plain = _message().replace(b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64")
    assert _counted_detection(plain) == 1
    view = MessageView(plain)
    view.message  # noqa: B018 - the parse another stage made
    with _counting() as counts:
        assert detect_codec(view) is None
    assert counts["parse"] == 0, counts
    assert detect_codec(b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n") is not None


def _counted_detection(data: bytes) -> int:
    with _counting() as counts:
        assert detect_codec(data) is None
    return counts["parse"]


def test_a_large_message_is_parsed_once_for_detection_and_nothing_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past KEEP_LIMIT a view keeps no reading (peak memory of large mail): the codecs still share
    one parse while detecting, then the classifier reads the header alone."""
    monkeypatch.setattr(MessageView, "KEEP_LIMIT", 4096)
    # base64 and an 8-bit Content-Type: neither the legacy pre-scan nor the classifier's byte
    # reading can answer, so the parses this test is about still happen
    data = _message(3 * 4096).replace(b"7bit", b"base64").replace(b"charset=utf-8", "charset=é".encode())
    view = MessageView(data)
    with _counting(rawmime.split_raw, mime.split_message) as counts:
        assert detect_codec(view) is None
        assert mime.classify(view).kind == "plain" and mime.classify(view).kind == "plain"
    assert counts["parse"] == 1 + 2, counts  # detection's whole parse, then each classify's header
    assert counts["split_message"] == 2 and not view.has(rawmime.parse_message) and not view.has(mime.split_message)


def test_canonical_data_is_not_copied() -> None:
    data = _message()
    assert to_crlf(data) is data and to_crlf(data, bare_cr=True) is data
    assert to_crlf(b"a\nb\r\nc") == b"a\r\nb\r\nc"
    assert to_crlf(b"a\rb\r\n", bare_cr=True) == b"a\r\nb\r\n" and to_crlf(b"a\rb\r\n") == b"a\rb\r\n"


def test_the_signed_entity_is_what_content_entity_cuts_out_of_the_signed_message() -> None:
    """Sign then encrypt encrypts `signed_entity` directly: the very bytes that splitting the
    whole multipart/signed message again (as before) gave."""
    outer = (b"From: <a@b.test>\r\n", b"To: <c@d.test>,\r\n <e@f.test>\r\n", b"Subject: x\r\n")
    entity = b"Content-Type: text/plain\r\n\r\nbody\r\n"
    message = mime.multipart_signed(outer, entity, b"\x30\x03\x02\x01\x01" * 40, "sha-256")
    cut_outer, cut_entity = mime.content_entity(message)
    assert cut_outer == outer
    assert message == b"".join(outer) + b"MIME-Version: 1.0\r\n" + cut_entity


def _runner_hops(pki: TestPKI, tmp_path: Path, data: bytes) -> tuple[int, set[str], bytes]:
    """Hops of the message's own task from the accept hand-off to the prepared hand-off (the poll
    loop's own visits to the spool are not the message's), and which of the MIME preparation
    ("content_entity") and the encryption ("encrypt_entity") ran off the event loop's thread."""
    config = load_config(write_config(tmp_path / "gw", sink_port=9).config)
    spool = Spool(config.spool.path).open()
    loop_thread = threading.get_ident()
    off_loop: set[str] = set()
    originals = {"content_entity": protect.content_entity, "encrypt_entity": protect.encrypt_entity}

    def traced(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != loop_thread:
                off_loop.add(name)
            return originals[name](*args, **kwargs)
        return call

    async def run() -> tuple[int, bytes]:
        done: asyncio.Queue[dict[int, bytes]] = asyncio.Queue()
        runner = PipelineRunner(config, spool, Pipeline(protection_stages(Ctx(pki, _policy(sender_copy=False)))),
                                handoff=lambda _msg, copies: done.put_nowait(copies))
        runner.start()
        try:
            msg_id = spool.accept(ORG_EMAIL, [PERSON_EMAIL], data, lifetime=3600, auth_user=ORG_EMAIL, listener="relay")
            with _counting() as counts:
                runner.prepare_now(msg_id)
                copies = await asyncio.wait_for(done.get(), 60)
            assert counts["parse"] == (0 if data.isascii() else 1), counts  # see the first test
            return counts[f"hop prepare-{msg_id}"], next(iter(copies.values()))
        finally:
            await runner.stop(1)

    for name in originals:
        setattr(protect, name, traced(name))
    try:
        hops, sent = asyncio.run(run())
    finally:
        for name, fn in originals.items():
            setattr(protect, name, fn)
        spool.close()
    return hops, off_loop, sent


def test_a_small_message_is_prepared_with_one_thread_hop(pki: TestPKI, tmp_path: Path) -> None:
    data = _message(protect.INLINE_LIMIT_8BIT)
    hops, off_loop, sent = _runner_hops(pki, tmp_path, data)
    assert hops == 1  # the spool's prepare record; the MIME and CMS work on the loop
    assert not off_loop
    assert email.message_from_bytes(asyncio.run(_opened(pki, sent))).get_payload(decode=True) == \
        data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("size, eight_bit, away, expected_hops", [
    (protect.INLINE_LIMIT * 3, False, {"content_entity", "encrypt_entity"}, 3),  # + the spool's record
    (protect.INLINE_LIMIT_8BIT * 2, True, {"content_entity"}, 2),  # its base64 entity is small: encrypted on the loop
], ids=["7bit", "8bit"])
def test_the_work_of_a_large_message_runs_off_the_event_loop(pki: TestPKI, tmp_path: Path, size: int, eight_bit: bool,
                                                             away: set[str], expected_hops: int) -> None:
    data = _message(size, eight_bit=eight_bit)
    hops, off_loop, sent = _runner_hops(pki, tmp_path, data)
    assert off_loop == away, "the MIME and CMS work of a large message must not run on the event loop"
    assert hops == expected_hops
    opened = email.message_from_bytes(asyncio.run(_opened(pki, sent)))
    assert opened.get_payload(decode=True) == data.split(b"\r\n\r\n", 1)[1]
