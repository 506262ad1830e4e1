"""The service the app starts: parse [intake], start MLLP and drop folders, stop cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.intake.service import DEDUP_FILE, IntakeService
from gateway.intake.settings import parse_intake
from gateway.routing.hl7 import mllp_frame
from tests.intake import samples as s


async def test_service_runs_mllp_and_drop_folders(tmp_path: Path, spool, directory) -> None:
    raw = {"intake": {
        "mllp": {"port": 0, "sender": s.LIS},
        "drop": {"lab1": {"path": "drop", "sender": s.LIS, "poll_interval": "50ms"}},
        "routing": {"unrouted": {s.LIS: s.UNROUTED}},
    }}
    config = parse_intake(raw, source="gw.toml", base=tmp_path)
    accepted: list[str] = []
    directory.close()  # the service opens its own connection to the same database
    service = IntakeService(config, spool, tmp_path / "directory.sqlite", tmp_path / "state", accepted.append, 3600.0)
    await service.start()
    try:
        assert service.mllp is not None and service.mllp.bound
        reader, writer = await asyncio.open_connection("127.0.0.1", service.mllp.bound)
        writer.write(mllp_frame(s.oru(control="CTRLSVC")))
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
        writer.close()
        assert b"MSA|AA|CTRLSVC" in ack
        (tmp_path / "drop" / "r.hpr").write_bytes(s.hprim_medecin("DRNOBODY"))
        for _ in range(250):
            if len(accepted) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(accepted) == 3  # the ORU, the HPRIM (to the unrouted mailbox) and the sender's notice
        assert (tmp_path / "state" / DEDUP_FILE).exists()
    finally:
        await service.stop()
    rcpts = sorted(r.address for m in spool.list() for r in m.recipients)
    assert rcpts == sorted([s.ADDR_LOCAL, s.UNROUTED, s.LIS])


async def test_disabled_service_does_nothing(tmp_path: Path, spool) -> None:
    service = IntakeService(parse_intake({}, source="gw.toml", base=tmp_path), spool, tmp_path / "d.sqlite",
                            tmp_path / "state", None, 3600.0)
    await service.start()
    await service.stop()
    assert not (tmp_path / "state").exists()
