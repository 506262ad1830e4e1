"""`msgw demo`: one whole flow on the embedded default, in a throw-away folder, step by step.

Starts the gateway in-process on free loopback ports, submits a lab result over STARTTLS +
AUTH like a LIS would, and waits for it in the local Maildir. Exit 0 when it all worked.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import ssl
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import aiosmtplib

from gateway.app import Gateway
from gateway.config import default_config_text, parse_config
from gateway.default_setup import DEMO_USER, prepare_default_files
from gateway.logs import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a whole flow on the embedded default and print each step")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    p.set_defaults(func=run)


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def _demo(base: Path) -> int:
    prepare_default_files(base / "var" / "default")
    data = tomllib.loads(default_config_text())
    for listener in data["listeners"].values():
        listener["port"] = 0
    config = parse_config(data, source="<embedded default>", base=base)
    password = (base / "var" / "default" / "demo.password").read_text().strip()
    gateway = Gateway(config)
    await gateway.start()
    try:
        host, port = gateway.server.bound["submission"]
        _step(f"gateway listening: submission on {host}:{port}, spool in {config.spool.path}")
        message = (f"From: <{DEMO_USER}>\r\nTo: <dr.demo@msgw.localhost>\r\nSubject: Demo result\r\n"
                   "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                   "Invented demo content, no real patient.\r\n").encode()
        ctx = ssl.create_default_context(cafile=str(base / "var" / "default" / "tls-cert.pem"))
        ctx.check_hostname = False  # the demo certificate names localhost; we connect by address
        _step("submitting a message over STARTTLS + AUTH PLAIN as a lab system would")
        await aiosmtplib.send(message, sender=DEMO_USER, recipients=["dr.demo@msgw.localhost"], hostname=host,
                              port=port, start_tls=True, tls_context=ctx, username=DEMO_USER, password=password)
        _step("accepted with 250 after the spool fsynced it")
        new = config.local.maildir / "dr.demo@msgw.localhost" / "new"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if new.exists() and any(new.iterdir()):
                files = list(new.iterdir())
                _step(f"delivered to the Maildir: {files[0]}")
                _step("demo finished: OK")
                return 0
            await asyncio.sleep(0.1)
        print("msgw: the demo message was not delivered within 15 s", file=sys.stderr)
        return 1
    finally:
        await gateway.stop()


def run(args: argparse.Namespace) -> int:
    setup_logging("text", "WARNING")
    folder = tempfile.mkdtemp(prefix="msgw-demo-")
    if args.keep:
        _step(f"working folder: {folder}")
    try:
        return asyncio.run(_demo(Path(folder)))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
