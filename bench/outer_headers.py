"""CPU of the outer header block of a protected copy (issue 15, preparation): the neutral Subject
encoded once per subject (`headers.subject_field`) and the Date read by a regex for its common form
(`datefield.outer_date`), beside the reference paths (`header_field` every time, the stdlib's
`parsedate_to_datetime` + `format_datetime`) in the same run.

What runs: `allowed_outer_fields` on the header block of `pipeline_parse.py`'s messages, then the
whole protection pipeline of `pipeline_parse.py` (real stages, TEST PKI, soft key: signing and
encryption included) per message, 1 KB and 20 KB. The reference is the same code with the two
fast paths swapped for the reference functions (module attributes), alternating rounds; CPU time
(`time.process_time`) per call, the best round of each.

    .venv/bin/python bench/outer_headers.py [--count 300] [--rounds 7] [--json FILE]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline_parse import CachedKeys, message  # noqa: E402
from gateway.pipeline import Envelope, Pipeline  # noqa: E402
from gateway.rawmime import header_block  # noqa: E402
from gateway.smime import datefield, headers  # noqa: E402
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, build_test_pki  # noqa: E402
from gateway.stages.build import protection_stages  # noqa: E402
from tests.stages.test_protection import _policy  # noqa: E402


@contextmanager
def reference_paths(on: bool) -> Iterator[None]:
    """The fast paths swapped for the reference ones while `on`."""
    saved = headers.subject_field, headers.outer_date
    if on:
        headers.subject_field = lambda subject: headers.header_field("Subject", subject)  # type: ignore[assignment]
        headers.outer_date = datefield._stdlib
    try:
        yield
    finally:
        headers.subject_field, headers.outer_date = saved  # type: ignore[assignment]


def cpu_us(call: Callable[[], object], count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - start) / count * 1e6


def alternate(call: Callable[[], object], count: int, rounds: int) -> tuple[float, float]:
    """(reference, fast): best CPU µs per call of alternating rounds."""
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for ref in (True, False):
            with reference_paths(ref):
                call()
                best[ref] = min(best[ref], cpu_us(call, count))
    return best[True], best[False]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "outer_headers.json"))
    args = ap.parse_args(argv)
    rows: dict[str, dict[str, float]] = {}
    subject = _policy(sender_copy=False).neutral_subject
    block = header_block(message(1024))
    rows["allowed_outer_fields"] = dict(zip(("reference_us", "fast_us"), alternate(
        lambda: headers.allowed_outer_fields(block, neutral_subject=subject), args.count * 10, args.rounds),
        strict=True))
    with tempfile.TemporaryDirectory(prefix="msgw-bench-outer-") as tmp:
        ctx = CachedKeys(build_test_pki(Path(tmp) / "pki"), _policy(sender_copy=False))
        pipeline = Pipeline(protection_stages(ctx))
        env = Envelope("Q1", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="relay")
        loop = asyncio.new_event_loop()
        try:
            for label, size in (("pipeline 1KB", 1024), ("pipeline 20KB", 20 * 1024)):
                data = message(size)
                rows[label] = dict(zip(("reference_us", "fast_us"), alternate(
                    lambda data=data: loop.run_until_complete(pipeline.run(env, data)),  # type: ignore[misc]
                    args.count, args.rounds), strict=True))
        finally:
            loop.close()
    print(f"{'what':<22} {'reference µs':>13} {'fast µs':>9} {'saved µs':>9}")
    for label, row in rows.items():
        print(f"{label:<22} {row['reference_us']:>13.1f} {row['fast_us']:>9.1f} "
              f"{row['reference_us'] - row['fast_us']:>9.1f}")
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
