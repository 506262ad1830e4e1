"""The runner's reads around one preparation, before and after, in the same run (issue 15).

Two in-process measurements, each alternating the base and the new path round by round:

- **record**: the preparation's record and the message read back for the hand-off to delivery:
  `prepare` + `get` (base) against `prepare_for_delivery` (new, one transaction). SQLite always;
  PostgreSQL too with `--pg` (a throw-away cluster as in bench/pg_nodes.py; root or the
  postgresql binaries) or `--dsn URI --password-file F`. Client CPU µs and wall µs per message.
- **fetch**: a message the runner was told about but no longer holds in memory: `get` and
  `message_bytes` as two trips to a worker thread (base) against `PipelineRunner._fetch` (new, one trip),
  from a running event loop. CPU µs and wall µs per message, trips per message.

    .venv/bin/python bench/prepare_read.py [--count 400] [--rounds 6] [--pg]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _support import body_lines, default_json, machine, print_table, write_json  # noqa: E402

from gateway.spool import NewCopy, Outcome, QueueStore, RecipientState, Spool  # noqa: E402

SIGNED = b"Content-Type: application/pkcs7-mime\r\n\r\n" + b"A" * 6000 + b"\r\n"
RCPTS = ["a@y.example", "b@y.example", "c@y.example"]


def _accepted(spool: QueueStore, body: bytes, count: int) -> list[tuple[str, list[int]]]:
    out = []
    for _ in range(count):
        msg_id = spool.accept("lab@lab.example", RCPTS, body, lifetime=3600)
        spool.take_accepted(msg_id)
        msg = spool.get(msg_id)
        assert msg is not None
        out.append((msg_id, [r.id for r in msg.recipients]))
    return out


def _plan(rids: list[int]) -> tuple[list[NewCopy], list[Outcome]]:
    return ([NewCopy("smime", False, SIGNED, (rids[0], rids[1]))],
            [Outcome(rids[2], RecipientState.BOUNCED, "5.7.1", "no certificate", address=RCPTS[2])])


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _base(spool: QueueStore, todo: list[tuple[str, list[int]]]) -> None:
    """main's `PipelineRunner._record`: the preparation, then `get`."""
    for msg_id, rids in todo:
        copies, outcomes = _plan(rids)
        assert spool.prepare(msg_id, copies, outcomes)
        assert spool.get(msg_id) is not None


def _new(spool: QueueStore, todo: list[tuple[str, list[int]]]) -> None:
    for msg_id, rids in todo:
        copies, outcomes = _plan(rids)
        assert spool.prepare_for_delivery(msg_id, copies, outcomes) is not None


def _counting_checkouts(spool: QueueStore) -> list[int]:
    """PostgreSQL: count the pool checkouts (`PgSpool._conn`: one per transaction or read)."""
    counter = [0]
    real = getattr(spool, "_conn", None)
    if real is None:
        return counter

    def counted(what: str) -> object:
        counter[0] += 1
        return real(what)

    spool._conn = counted  # type: ignore[union-attr]
    return counter


def bench_record(spool: QueueStore, count: int, rounds: int, body: bytes) -> dict[str, dict[str, float]]:
    per: dict[str, list[tuple[float, float]]] = {"base": [], "new": []}
    checkouts = {"base": 0, "new": 0}
    counter = _counting_checkouts(spool)
    for r in range(rounds):
        for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
            todo = _accepted(spool, body, count)
            path = _base if name == "base" else _new
            before = counter[0]
            cpu, wall = _timed(functools.partial(path, spool, todo))
            checkouts[name] += counter[0] - before
            per[name].append((cpu / count * 1e6, wall / count * 1e6))
            for msg_id, _ in todo:
                spool.delete(msg_id)
    return {k: {"cpu_us": statistics.median(c for c, _ in v), "wall_us": statistics.median(w for _, w in v),
                "cpu_us_rounds": [c for c, _ in v], "checkouts": checkouts[k] / (count * rounds)}
            for k, v in per.items()}


@contextlib.contextmanager
def _postgres(args: argparse.Namespace, folder: Path) -> Iterator[QueueStore | None]:
    if not (args.pg or args.dsn):
        yield None
        return
    from pg_nodes import fresh_database, throwaway_cluster

    from gateway.spool.pg import PgSpool

    with contextlib.ExitStack() as stack:
        if args.dsn:
            admin, pwfile = args.dsn, Path(args.password_file)
        else:
            admin, pwfile = stack.enter_context(throwaway_cluster(folder))
        store = PgSpool(fresh_database(admin, pwfile), password=pwfile.read_text().strip()).open()
        try:
            yield store
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="messages per round and path")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, alternating base and new")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--pg", action="store_true", help="also PostgreSQL, in a throw-away cluster")
    parser.add_argument("--dsn", help="an existing PostgreSQL server instead (admin DSN)")
    parser.add_argument("--password-file")
    parser.add_argument("--json", default=default_json("prepare_read"))
    args = parser.parse_args(argv)
    body = b"From: lab@lab.example\r\nSubject: bench\r\n\r\n" + body_lines(args.size)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="msgw-bench-") as tmp:
        folder = Path(tmp)
        with Spool(folder / "spool").open() as spool:
            results["record sqlite"] = bench_record(spool, args.count, args.rounds, body)
        with _postgres(args, folder) as pg:
            if pg is not None:
                results["record postgresql"] = bench_record(pg, max(args.count // 4, 50), args.rounds, body)
    rows = [[name, r["base"]["cpu_us"], r["new"]["cpu_us"], r["base"]["cpu_us"] - r["new"]["cpu_us"],
             r["base"]["wall_us"], r["new"]["wall_us"], r["base"]["checkouts"], r["new"]["checkouts"]]
            for name, r in results.items()]
    print_table(["µs per message", "base CPU", "new CPU", "saved CPU", "base wall", "new wall",
                 "base pg checkouts", "new pg checkouts"], rows, digits=2)
    print("trips to a worker thread per message: 1 both; SQLite: one round of the spool's lock less")
    write_json(args.json, {"bench": "prepare_read", "args": vars(args), "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
