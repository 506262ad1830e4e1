"""CPU per message of building the CMS of a sign+encrypt copy: the template builders beside the
whole-asn1crypto oracle and (``--base REV``) another revision's builders, in the same run.

What one "message" is here, as the gateway's S/MIME copy does it (protect.protect_smime): a
detached SignedData over the entity (TEST PKI organisation key RSA-2048 + its chain), then an
EnvelopedData (AES-256-CBC, RSA PKCS#1 v1.5) of entity + signature to two recipients (the
correspondent and the sender's copy). MIME and base64 are not counted: only the CMS builders.
The RSA floor row is the private + 2 public RSA operations alone, timed in the same run.

Implementations alternate round by round (noise hits all of them); the figure is the median of
the rounds' CPU time (process_time) per message. No thresholds.
Usage: .venv/bin/python bench/cms_build.py [--count 2000] [--sizes 1KB,20KB] [--base main] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import ROOT, default_json, machine, print_table, write_json  # noqa: E402 - bench/ is not a package
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402

from gateway.smime.cms_envelope import encrypt_content  # noqa: E402
from gateway.smime.cms_reference import encrypt_content_reference, sign_content_reference  # noqa: E402
from gateway.smime.cms_sign import sign_content  # noqa: E402
from gateway.smime.cms_template import check_encryption_usage  # noqa: E402
from gateway.smime.softkeys import load_pem_key  # noqa: E402
from gateway.smime.testpki import build_test_pki  # noqa: E402

Build = Callable[[bytes], Awaitable[bytes]]


def _size(text: str) -> int:
    text = text.strip().upper()
    for unit, factor in (("MB", 1 << 20), ("KB", 1 << 10)):
        if text.endswith(unit):
            return int(float(text[:-2]) * factor)
    return int(text)


def load_revision(rev: str) -> tuple[types.ModuleType, types.ModuleType] | str:
    """`cms_sign` and `cms_envelope` as they are at `rev`, loaded beside this tree's modules
    (they import only cmsutil/softkeys/keyapi/errors helpers, which this tree still has)."""
    modules = []
    for name in ("cms_sign", "cms_envelope"):
        try:
            source = subprocess.run(["git", "show", f"{rev}:gateway/smime/{name}.py"], cwd=ROOT, check=True,
                                    capture_output=True, text=True, timeout=30).stdout
            module = types.ModuleType(f"_rev_{name}")
            exec(compile(source, f"{rev}:gateway/smime/{name}.py", "exec"), module.__dict__)  # noqa: S102
        except (subprocess.SubprocessError, OSError, ImportError, SyntaxError) as exc:
            return f"{rev}: {exc}"
        modules.append(module)
    return modules[0], modules[1]


def builders(key, recipients, base: tuple[types.ModuleType, types.ModuleType] | None) -> dict[str, Build]:
    async def template(entity: bytes) -> bytes:
        der = await sign_content(entity, key)
        return encrypt_content(entity + der, recipients)

    async def oracle(entity: bytes) -> bytes:
        import datetime as dt
        der = await sign_content_reference(entity, key, signing_time=dt.datetime.now(dt.UTC))
        cek, iv = os.urandom(32), os.urandom(16)
        wrapped = [check_encryption_usage(c).encrypt(cek, padding.PKCS1v15()) for c in recipients]
        return encrypt_content_reference(entity + der, recipients, cipher="aes256-cbc", key_transport="pkcs1v15",
                                         recipient_id="issuer-serial", cek=cek, iv=iv, encrypted_keys=wrapped)

    async def floor(entity: bytes) -> bytes:
        key.private_key.sign(entity[:120], padding.PKCS1v15(), hashes.SHA256())
        for c in recipients:
            c.public_key().encrypt(os.urandom(32), padding.PKCS1v15())
        return b""

    found: dict[str, Build] = {"template (this tree)": template, "asn1crypto oracle": oracle}
    if base is not None:
        sign_mod, env_mod = base

        async def revision(entity: bytes) -> bytes:
            der = await sign_mod.sign_content(entity, key)
            return bytes(env_mod.encrypt_content(entity + der, recipients))

        found["base revision"] = revision
    found["RSA floor (1 sign + 2 public)"] = floor
    return found


async def measure(build: Build, entity: bytes, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        await build(entity)
    return (time.process_time() - start) / count * 1000.0


async def run(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="msgw-cmsbench-"))
    pki = build_test_pki(folder)
    entry = pki["org_sign"]
    key = load_pem_key(entry.key_path, entry.cert_path, entry.chain_path)
    recipients = [pki["person_encrypt"].cert, pki["org_encrypt"].cert]
    base = None
    note = ""
    if args.base:
        loaded = load_revision(args.base)
        if isinstance(loaded, str):
            note = f"base revision not loaded ({loaded})"
        else:
            base = loaded
    impls = builders(key, recipients, base)
    rounds = max(1, args.rounds)
    rows, results = [], []
    for size_text in args.sizes.split(","):
        size = _size(size_text)
        entity = b"Content-Type: text/plain\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size // 78 + 1)
        for build in impls.values():  # warm caches and imports
            await build(entity)
        per_round: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(rounds):
            for name, build in impls.items():
                per_round[name].append(await measure(build, entity, max(1, args.count // rounds)))
        ref = statistics.median(per_round["template (this tree)"])
        for name, values in per_round.items():
            ms = statistics.median(values)
            rows.append([size_text, name, ms, ms / ref])
            results.append({"size": size_text, "builder": name, "ms_cpu_per_message": ms, "rounds_ms": values})
    print(f"\nCMS build, sign + encrypt to 2 recipients, CPU ms per message (median of {rounds} rounds)")
    print_table(["size", "builder", "ms CPU/msg", "x template"], rows, digits=3)
    if note:
        print(note)
    return {"bench": "cms_build", "machine": machine(), "count": args.count, "rounds": rounds,
            "base": args.base, "note": note, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per builder and size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1KB,20KB")
    parser.add_argument("--base", default="main", help="git revision whose builders to time too ('' for none)")
    parser.add_argument("--json", default=default_json("cms_build"))
    args = parser.parse_args()
    document = asyncio.run(run(args))
    write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
