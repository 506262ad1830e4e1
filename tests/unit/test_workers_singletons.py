"""The singletons of a multi-process gateway (issue 15, item 6): the intake doors run in worker 0
only (two drop-folder pollers or two MLLP listeners would take the same files and ports); every
worker serves SMTP. Under `msgw serve` the master binds the SMTP ports and hands each connection
over (tests/e2e/test_workers_balance.py); these in-process workers have no master, so (as
`Gateway(handoff=None, workers=2)` does) each binds the same ports with SO_REUSEPORT."""

from __future__ import annotations

from pathlib import Path

from gateway.app import Gateway
from gateway.config import load_config
from tests.e2e.harness import free_port, write_config


def _config(tmp_path: Path):
    drop = tmp_path / "drop"
    drop.mkdir()
    setup = write_config(tmp_path, sink_port=free_port())
    setup.config.write_text(setup.config.read_text() + f"""
[intake.drop.lis]
path = "{drop}"
sender = "lab@msgw.test"
poll_interval = "200ms"

[intake.routing]
unrouted_default = "postmaster@msgw.test"
""")
    return load_config(setup.config)


async def test_intake_doors_run_in_worker_0_only_and_both_share_the_smtp_ports(tmp_path: Path) -> None:
    config = _config(tmp_path)
    w0 = Gateway(config, owner="w0", primary=True, workers=2)
    w1 = Gateway(config, owner="w1", primary=False, workers=2)
    await w0.start()
    try:
        await w1.start()  # the same ports: only with SO_REUSEPORT on both
        try:
            assert w0.intake is not None and w1.intake is None
            assert w0.server is not None and w1.server is not None
            assert w0.server.bound == w1.server.bound
        finally:
            await w1.stop()
    finally:
        await w0.stop()
