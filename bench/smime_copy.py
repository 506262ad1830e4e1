"""In-process CPU per message of the S/MIME copy (issue 15, fourth round): the outbound stage of a
real gateway context (the bench's configuration: TEST PKI, soft key, the recipient's certificate in
the directory, sender copy on) signing and encrypting a 1 KB and a 20 KB message like
`relay_throughput.py`'s, and `protect_smime` alone.

What runs: `GatewayContext` built from a real configuration (`_support.write_gateway_config`), the
route plan made once (it is the route stage's work), then `OutboundStage` per message — key lookup,
certificate checks, discovery, signing, encryption, base64, the audit calls (the audit writer
itself is replaced by a no-op: its thread and fsyncs are the queue's part). Sequential, one
process: CPU time (`time.process_time`, every thread) per message, best of `--repeat` runs. The
last figure is the same stage with the RSA signature reused (the Python around the cryptography).

    .venv/bin/python bench/smime_copy.py [--count 400] [--repeat 5]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import RECIPIENT, SENDER, bench_message, body_lines, build_pki, write_gateway_config  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.pipeline import Envelope, WorkItem  # noqa: E402
from gateway.smime.protect import protect_smime  # noqa: E402
from gateway.stages.build import GatewayContext, build_pipeline  # noqa: E402
from gateway.stages.outbound import OutboundStage  # noqa: E402
from gateway.stages.route import RouteStage  # noqa: E402
from gateway.stages.view import view_of  # noqa: E402


async def best_cpu_us(call: Callable[[], Awaitable[object]], count: int, repeat: int) -> float:
    """Best of `repeat` runs of `count` calls: CPU microseconds per call."""
    for _ in range(20):
        await call()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(count):
            await call()
        best = min(best, (time.process_time() - start) / count)
    return best * 1e6


async def figures(ctx: GatewayContext, size: int, count: int, repeat: int) -> dict[str, float]:
    data = bench_message(1, 1, body_lines(size))
    env = Envelope("Q1", SENDER, (RECIPIENT,), auth_user=SENDER, listener="relay")
    item = await RouteStage(ctx)(WorkItem(env, data))
    view_of(item)  # made by the earlier stages in the gateway
    stage = OutboundStage(ctx)
    out = await stage(item)
    assert out.outgoing and out.outgoing[0].form == "smime", out
    key = await ctx.signing_key(SENDER)
    certs = await ctx.encryption_certificates(RECIPIENT)
    own = None

    async def protect() -> bytes:
        return await protect_smime(view_of(item), key, certs, neutral_subject="Message securise", sender_copy=own)

    row = {"outbound": await best_cpu_us(lambda: stage(item), count, repeat),
           "protect_smime": await best_cpu_us(protect, count, repeat)}
    # The Python around the cryptography alone: the same stage, the RSA signature of a to-be-signed
    # DER computed once and answered again (signingTime changes each second: one real signature a
    # second). The RSA-2048 private operation (~0.27 ms here) is the noisiest part of the figure.
    guarded = ctx._keys["labo-sign"]
    real = guarded.key
    guarded.key = _SameSignature(real)
    try:
        row["outbound_no_rsa_sign"] = await best_cpu_us(lambda: stage(item), count, repeat)
    finally:
        guarded.key = real
    return row


class _SameSignature:
    """A real key that answers the last to-be-signed bytes it signed with the same signature."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.last: tuple[bytes, bytes] | None = None

    @property
    def certificate(self) -> Any:
        return self.key.certificate

    @property
    def chain(self) -> Any:
        return self.key.chain

    async def sign(self, data: bytes, hash_name: Any, padding: Any) -> bytes:
        if self.last is None or self.last[0] != data:
            self.last = (data, await self.key.sign(data, hash_name, padding))
        return self.last[1]


class _NoAudit:
    """The audit writer's calls, without its thread and fsyncs (the queue's part, not measured here)."""

    def __call__(self, **fields: object) -> None:
        pass

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msgw-bench-smime-") as tmp:
        pki = build_pki(Path(tmp))
        setup = write_gateway_config(Path(tmp) / "gw", 9, pki=pki)
        _, ctx = build_pipeline(load_config(setup.config))
        assert isinstance(ctx, GatewayContext)
        ctx.audit_writer.close()
        ctx.audit_writer = _NoAudit()  # type: ignore[assignment]
        try:
            for label, size in (("1KB", 1024), ("20KB", 20 * 1024)):
                row = asyncio.run(figures(ctx, size, args.count, args.repeat))
                print(f"{label:>5}: outbound stage {row['outbound']:.0f} us CPU/msg, "
                      f"protect_smime {row['protect_smime']:.0f} us, outbound without the RSA signature "
                      f"{row['outbound_no_rsa_sign']:.0f} us (best of {args.repeat} x {args.count})")
        finally:
            ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
