"""What handing a connection from the master to a worker costs, in process (issue 15, fourth round).

`gateway.server.handoff`: the master accepts, sends the socket over a socketpair (SCM_RIGHTS) and
closes its copy; the worker receives it and makes the SMTP protocol with
``loop.connect_accepted_socket``. Measured here, CPU time (``time.process_time``, best of
``--repeat``) per connection over ``--count`` connections queued in the kernel beforehand:

* ``master``: accept → sendmsg → close (`Dispatcher._accept`, the master's whole share);
* ``worker handed``: recvmsg → socket → connect_accepted_socket → protocol made (`HandoffReceiver`);
* ``worker direct``: the loop's own accept → protocol made (``loop.create_server``: one process,
  or SO_REUSEPORT workers, before this round), the baseline of the worker's share.

The protocol is a bare ``asyncio.Protocol`` (the SMTP greeting is the same either way). Usage:
``python bench/handoff_cost.py [--count 200] [--repeat 7] [--loop uvloop|asyncio]``. Never a timing
threshold: the figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from gateway.server.handoff import Dispatcher, HandoffReceiver, Listening, bind_listeners
from gateway.workers import loop_factory


class _Made(asyncio.Protocol):
    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.done()


def _queued(count: int) -> tuple[Listening, list[socket.socket]]:
    """A listening socket with `count` connections waiting in its accept queue."""
    listening = bind_listeners([("relay", "127.0.0.1", 0)], 4096)[0]
    clients = [socket.create_connection(listening.bound) for _ in range(count)]
    return listening, clients


async def _until(count: int, start: Callable[[Callable[[], Any]], Any]) -> float:
    """CPU seconds from `start(factory)` until `count` protocols were made."""
    made = 0
    done = asyncio.get_running_loop().create_future()
    transports: list[Any] = []

    def one() -> None:
        nonlocal made
        made += 1
        if made == count and not done.done():
            done.set_result(None)

    def factory() -> _Made:
        proto = _Made(one)
        transports.append(proto)
        return proto

    t0 = time.process_time()
    server = await start(factory)
    await done
    spent = time.process_time() - t0
    for proto in transports:
        proto.transport.close()
    if server is not None:
        server.close()
    return spent


def direct(count: int, choice: str) -> float:
    listening, clients = _queued(count)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        return await _until(count, lambda factory: loop.create_server(factory, sock=listening.sock))
    try:
        return _run(main, choice)
    finally:
        for client in clients:
            client.close()


def handed(count: int, choice: str) -> tuple[float, float]:
    """(master CPU, worker CPU) for `count` connections."""
    listening, clients = _queued(count)
    selector = selectors.DefaultSelector()
    dispatcher = Dispatcher([listening], selector, startup_wait=0)
    fd = dispatcher.add_worker(0)
    dispatcher.worker_ready(0)
    t0 = time.process_time()
    while sum(dispatcher.sessions().values()) < count:
        dispatcher._accept(listening)
    master = time.process_time() - t0
    receiver = HandoffReceiver(fd, {"relay": listening.bound})

    async def main() -> float:
        async def start(factory: Callable[[], Any]) -> None:
            receiver.listener(0, "relay", factory)
            receiver.start()
        return await _until(count, start)
    try:
        worker = _run(main, choice)
    finally:
        receiver.close()
        dispatcher.close()
        selector.close()
        for client in clients:
            client.close()
    return master, worker


def _run(main: Callable[[], Any], choice: str) -> float:
    _, factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return float(runner.run(main()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--count", type=int, default=200, help="connections per round (queued beforehand)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds; the best is printed")
    ap.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"), help="event loop")
    args = ap.parse_args()
    base, masters, workers = [], [], []
    for _ in range(args.repeat):
        base.append(direct(args.count, args.loop))
        master, worker = handed(args.count, args.loop)
        masters.append(master)
        workers.append(worker)
    per = 1e6 / args.count
    name, _ = loop_factory(args.loop)
    print(f"loop {name}, {args.count} connections, best of {args.repeat} (CPU µs per connection)")
    print(f"  worker direct  (loop accept → protocol made)            {min(base) * per:7.1f}")
    print(f"  worker handed  (recvmsg → connect_accepted_socket → made) {min(workers) * per:7.1f}")
    print(f"  master         (accept → sendmsg → close)               {min(masters) * per:7.1f}")
    print(f"  hand-off total (master + worker handed)                 {(min(masters) + min(workers)) * per:7.1f}")


if __name__ == "__main__":
    main()
