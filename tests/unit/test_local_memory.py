"""One message for many local mailboxes costs one copy of the message, not one per mailbox
(issue 11, item 8): measured with tracemalloc while delivering over real sockets (LMTP) and
into real Maildirs. The LMTP peer is `lmtp_discard` (it keeps counts, not bytes), so the peak
is the gateway's own."""

from __future__ import annotations

import asyncio
import tracemalloc
from dataclasses import replace
from pathlib import Path

from gateway.config import load_config
from gateway.delivery.local import deliver_lmtp
from gateway.delivery.nexthop import NextHopResolver
from gateway.pipeline import Outgoing, Pipeline, WorkItem
from gateway.runner import QueueService as DeliveryManager
from gateway.spool import Spool
from tests.e2e.harness import write_config
from tests.unit.lmtp_discard import start_discard_lmtp

MB = 1 << 20


def _message(size: int) -> bytes:
    """A result-sized message whose lines start with dots (the worst case for DATA)."""
    return b"From: lab@lab.example\r\nSubject: r\r\n\r\n" + (b".y" * 38 + b"\r\n") * (size // 78)


def _peak(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lmtp_sends_a_large_message_without_copies_of_it() -> None:
    data = _message(10 * MB)
    rcpts = [f"dr{i}@msgw.test" for i in range(100)]

    async def run() -> None:
        server, port, stats = await start_discard_lmtp()
        try:
            results = await deliver_lmtp("127.0.0.1", port, sender="lab@lab.example", recipients=rcpts,
                                         message=data, timeout=30)
        finally:
            server.close()
            await server.wait_closed()
        assert {code for code, _ in results.values()} == {250}
        assert stats.transactions == 1 and len(stats.recipients) == 100

    peak = _peak(lambda: asyncio.run(run()))
    print(f"\nLMTP, 10 MiB to 100 mailboxes: peak {peak / MB:.1f} MiB")
    assert peak < len(data), f"peak {peak} for a {len(data)}-byte message"


def test_maildir_writes_every_mailbox_from_one_buffer(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=25)
    resolver = NextHopResolver(load_config(setup.config))
    data = _message(2 * MB)
    rcpts = [f"dr{i}@msgw.test" for i in range(50)]
    results = {}

    def run() -> None:
        results.update(asyncio.run(resolver.deliver_local("lab@lab.example", rcpts, data))[0])

    peak = _peak(run)
    print(f"\nMaildir, 2 MiB to 50 mailboxes: peak {peak / MB:.1f} MiB")
    assert {r.code for r in results.values()} == {250}
    files = list(setup.maildir.glob("*/new/*"))
    assert len(files) == 50 and all(f.stat().st_size > len(data) for f in files)
    assert peak < len(data)


async def _same_bytes_per_recipient(item: WorkItem) -> WorkItem:
    """A stage that gives every local recipient its own Outgoing, all on the one shared buffer."""
    return replace(item, outgoing=tuple(Outgoing((r,), item.data, form="local-verified")
                                        for r in item.envelope.recipients))


def test_identical_copies_for_local_mailboxes_go_in_one_transaction(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        server, port, stats = await start_discard_lmtp()
        try:
            setup = write_config(tmp_path / "gw", sink_port=25, extra="")
            lmtp = f'mode = "lmtp"\nlmtp_host = "127.0.0.1"\nlmtp_port = {port}'
            text = setup.config.read_text().replace('maildir = "maildir"', f'maildir = "maildir"\n{lmtp}')
            setup.config.write_text(text)
            config = load_config(setup.config)
            spool = Spool(config.spool.path).open()
            rcpts = [f"dr{i}@msgw.test" for i in range(100)]
            msg_id = spool.accept("lab@lab.example", rcpts, _message(5 * MB), lifetime=3600)
            manager = DeliveryManager(config, spool, Pipeline((_same_bytes_per_recipient,)))
            tracemalloc.start()
            await manager.run_once()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert spool.get(msg_id) is None, "every mailbox delivered, the message left the queue"
            return stats.transactions, peak
        finally:
            server.close()
            await server.wait_closed()

    transactions, peak = asyncio.run(run())
    print(f"\nmanager, 5 MiB to 100 local mailboxes: {transactions} LMTP transaction(s), peak {peak / MB:.1f} MiB")
    assert transactions == 1
    assert peak < 3 * 5 * MB
