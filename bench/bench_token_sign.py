"""Signatures per second through a PKCS#11 token (SoftHSM2), next to a soft-key baseline.

Measures, in the same run and on the same machine:
- baseline: the same RSA-2048 PKCS#1 v1.5 SHA-256 signature with a soft key (cryptography),
  and `openssl speed rsa2048`'s sign figure when openssl is installed;
- the token through the gateway's path (asyncio -> bounded FIFO queue -> the module's single
  thread -> C_Sign) with 1 and 20 concurrent requesters;
- optionally the same with worker processes (`--processes N`, one login each).

No thresholds: this prints a table and a JSON document (`--json FILE` to also write it).
Usage: .venv/bin/python bench/bench_token_sign.py [--seconds 2] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "123456"
DATA = os.urandom(120)  # about the size of DER signed attributes


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST bench key")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


def setup_softhsm(root: Path, key: rsa.RSAPrivateKey) -> None:
    """A throw-away SoftHSM2 token holding `key` and its certificate (id 01)."""
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (root / "key.der").write_bytes(key_der)
    (root / "cert.der").write_bytes(_self_signed(key).public_bytes(serialization.Encoding.DER))
    run = [["softhsm2-util", "--init-token", "--free", "--label", "BENCH", "--pin", PIN,
            "--so-pin", "12345678"]]
    tool = ["pkcs11-tool", "--module", MODULE, "--token-label", "BENCH", "--login", "--pin", PIN]
    for kind, path in (("privkey", root / "key.der"), ("cert", root / "cert.der")):
        run.append([*tool, "--write-object", str(path), "--type", kind, "--id", "01", "--label", "k"])
    for cmd in run:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def soft_baseline(key: rsa.RSAPrivateKey, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.perf_counter() - start)


def openssl_speed(seconds: float) -> float | None:
    if shutil.which("openssl") is None:
        return None
    done = subprocess.run(["openssl", "speed", "-seconds", str(max(1, int(seconds))), "rsa2048"],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", done.stdout, re.MULTILINE)
    return float(match.group(1)) if match else None


async def token_rate(key: object, requesters: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds
    counts = [0] * requesters

    async def requester(i: int) -> None:
        while time.perf_counter() < deadline:
            await key.sign(DATA, "sha256", "pkcs1v15")  # type: ignore[attr-defined]
            counts[i] += 1

    start = time.perf_counter()
    await asyncio.gather(*(requester(i) for i in range(requesters)))
    return sum(counts) / (time.perf_counter() - start)


async def measure_tokens(seconds: float, processes: int) -> dict[str, float]:
    from gateway.smime.pkcs11 import StaticPin, open_token_key_async

    results: dict[str, float] = {}
    key = await open_token_key_async("pkcs11:token=BENCH;id=%01", module=MODULE, pin=StaticPin(PIN),
                                     concurrency=8, max_waiting=10_000)
    await token_rate(key, 1, 0.2)  # warm-up
    results["token, 1 requester"] = await token_rate(key, 1, seconds)
    results["token, 20 requesters"] = await token_rate(key, 20, seconds)
    if processes > 0:
        pooled = await open_token_key_async("pkcs11:token=BENCH;id=%01", module=MODULE, pin=StaticPin(PIN),
                                            processes=processes, max_waiting=10_000)
        try:
            await pooled._pool.warm_up()
            results[f"token, 20 requesters, {processes} processes"] = await token_rate(pooled, 20, seconds)
        finally:
            pooled.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes for the pooled run (0: skip)")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON result here")
    args = parser.parse_args(argv)
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed", file=sys.stderr)
            return 2
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory(prefix="bench-softhsm-") as tmp:
        setup_softhsm(Path(tmp), key)
        rows: dict[str, float | None] = {
            "baseline: soft key (cryptography), 1 thread": soft_baseline(key, args.seconds),
            "baseline: openssl speed rsa2048 sign": openssl_speed(args.seconds),
        }
        rows.update(asyncio.run(measure_tokens(args.seconds, args.processes)))
    soft = rows["baseline: soft key (cryptography), 1 thread"] or 1.0
    print(f"{'measurement':<52} {'sign/s':>10} {'vs soft key':>12}")
    for name, rate in rows.items():
        shown = f"{rate:10.0f}" if rate is not None else f"{'n/a':>10}"
        ratio = f"{rate / soft:11.2f}x" if rate is not None else f"{'':>12}"
        print(f"{name:<52} {shown} {ratio}")
    doc = {"benchmark": "token_sign", "algorithm": "RSA-2048 PKCS#1 v1.5 SHA-256", "seconds": args.seconds,
           "cpus": os.cpu_count(), "signatures_per_second": rows}
    print(json.dumps(doc, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
