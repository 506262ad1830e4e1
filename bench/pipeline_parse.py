"""In-process figures of one message's preparation (issue 15, items 2 and 7): how many times the
stdlib `email` parser runs, how many thread-pool hand-offs the runner makes, and the time per
message of the protection pipeline, for a 1 KB and a 20 KB message signed and encrypted.

What runs: the real stages (`protection_stages`) on a real-key context (the TEST PKI, soft keys:
`tests/stages/test_protection.py: Ctx`), and `PipelineRunner` on a real spool from the accept
hand-off (`prepare_now`) to the prepared hand-off to delivery. Counting calls only: nothing is
mocked. Sequential messages: the figures are per message, not a load. The time is the process's
CPU time (every thread: work handed to the thread pool counts too), steadier than wall time on a
shared machine; the wall-clock median is printed beside it.

    .venv/bin/python bench/pipeline_parse.py [--count 300] [--json FILE]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import email.feedparser
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.pipeline import Envelope, Pipeline  # noqa: E402
from gateway.runner import PipelineRunner  # noqa: E402
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, build_test_pki  # noqa: E402
from gateway.spool import Spool  # noqa: E402
from gateway.stages.build import protection_stages  # noqa: E402
from tests.e2e.harness import write_config  # noqa: E402
from tests.stages.test_protection import Ctx, _key, _policy  # noqa: E402


def message(size: int, *, eight_bit: bool = False) -> bytes:
    """A lab-result-like text message of about `size` bytes (7-bit unless `eight_bit`)."""
    head = (f"From: <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Resultat HbA1c\r\n"
            "Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <r1@labo-tests.sante.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\r\n\r\n").encode()
    line = ("HbA1c 6,1 % — résultat normal\r\n" if eight_bit else "HbA1c 6,1 % - resultat normal\r\n").encode()
    return head + line * max(1, (size - len(head)) // len(line))


@contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count parser runs (every `email` parse builds one FeedParser, whatever its entry point) and
    thread-pool hand-offs (`asyncio.to_thread` goes through `run_in_executor`)."""
    counts: Counter[str] = Counter()
    parser_init = email.feedparser.FeedParser.__init__
    loop_class = asyncio.BaseEventLoop
    executor = loop_class.run_in_executor

    @functools.wraps(parser_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["parses"] += 1
        parser_init(self, *args, **kwargs)

    @functools.wraps(executor)
    def hop(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["hops"] += 1
        return executor(self, *args, **kwargs)

    email.feedparser.FeedParser.__init__ = init  # type: ignore[method-assign]
    loop_class.run_in_executor = hop  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        email.feedparser.FeedParser.__init__ = parser_init  # type: ignore[method-assign]
        loop_class.run_in_executor = executor  # type: ignore[method-assign]


class CachedKeys(Ctx):
    """The tests' real-key context with its keys loaded once (a running gateway keeps them)."""

    @functools.cached_property
    def _org(self) -> Any:
        return _key(self.pki, "org_sign")

    async def signing_key(self, identity: str | None) -> Any:
        return self._org if identity == ORG_EMAIL else None


def pipeline_figures(ctx: Ctx, data: bytes, count: int) -> dict[str, float]:
    pipeline = Pipeline(protection_stages(ctx))
    env = Envelope("Q1", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="relay")

    async def run() -> dict[str, float]:
        await pipeline.run(env, data)  # warm caches (keys, templates)
        with counting() as counts:
            result = await pipeline.run(env, data)
        assert result.outgoing and result.outgoing[0].form == "smime", result
        times = []
        cpu = time.process_time()
        for _ in range(count):
            start = time.perf_counter()
            await pipeline.run(env, data)
            times.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
        return {"parses": counts["parses"], "pipeline_hops": counts["hops"],
                "pipeline_us_median": statistics.median(times) * 1e6,
                "pipeline_us_mean": statistics.mean(times) * 1e6,
                "pipeline_cpu_us": cpu / count * 1e6}

    return asyncio.run(run())


def runner_hops(ctx: Ctx, data: bytes, where: Path) -> int:
    """Hand-offs from the accept hand-off (`prepare_now`) to the prepared hand-off to delivery."""
    config = load_config(write_config(where, sink_port=9).config)
    spool = Spool(config.spool.path).open()

    async def run() -> int:
        done: asyncio.Queue[str] = asyncio.Queue()
        runner = PipelineRunner(config, spool, Pipeline(protection_stages(ctx)),
                                handoff=lambda msg, _copies: done.put_nowait(msg.id))
        runner.start()
        try:
            warm = spool.accept(ORG_EMAIL, [PERSON_EMAIL], data, lifetime=3600, auth_user=ORG_EMAIL)
            runner.prepare_now(warm)
            await asyncio.wait_for(done.get(), 30)
            msg_id = spool.accept(ORG_EMAIL, [PERSON_EMAIL], data, lifetime=3600, auth_user=ORG_EMAIL)
            with counting() as counts:
                runner.prepare_now(msg_id)
                assert await asyncio.wait_for(done.get(), 30) == msg_id
            return counts["hops"]
        finally:
            await runner.stop(1)

    try:
        return asyncio.run(run())
    finally:
        spool.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msgw-bench-parse-") as tmp:
        pki = build_test_pki(Path(tmp) / "pki")
        ctx = CachedKeys(pki, _policy(sender_copy=False))
        rows: dict[str, dict[str, float]] = {}
        cases: list[tuple[str, Callable[[], bytes]]] = [
            ("1KB", lambda: message(1024)), ("20KB", lambda: message(20 * 1024)),
            ("20KB-8bit", lambda: message(20 * 1024, eight_bit=True))]
        for n, (label, make) in enumerate(cases):
            data = make()
            row = pipeline_figures(ctx, data, args.count)
            row["runner_hops"] = runner_hops(ctx, data, Path(tmp) / f"gw{n}")
            rows[label] = row
            print(f"{label:>10}: parses {row['parses']:.0f}, hops in the pipeline {row['pipeline_hops']:.0f}, "
                  f"runner hops accept->prepared {row['runner_hops']:.0f}, "
                  f"pipeline {row['pipeline_cpu_us']:.0f} us CPU/msg (all threads), wall median "
                  f"{row['pipeline_us_median']:.0f} us")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
