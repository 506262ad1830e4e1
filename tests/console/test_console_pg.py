"""The console on the shared queue (issue 18): the queue page, a message's page, retry and delete
work on `PgSpool` (real PostgreSQL, real TLS), each claimed message shows which node's worker
holds its lease, and every page says which node the console runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import storage
from gateway.audit import AuditTrail, AuditWriter
from gateway.console.server import ConsoleServer
from tests.console.support import console_config
from tests.console.test_web_security import CSRF, client, login
from tests.storage.conftest import split_password

pytestmark = pytest.mark.postgresql


async def test_queue_retry_and_delete_on_the_shared_queue_show_the_lease_holder(pg_dsn, tmp_path: Path) -> None:
    plain, password = split_password(pg_dsn)
    (tmp_path / "pg.pass").write_text(password + "\n")
    config = console_config(tmp_path, extra=(f'[storage]\nbackend = "postgresql"\ndsn = "{plain}"\n'
                                             f'password_file = "pg.pass"\nnode = "node-c"\n'))
    spool = storage.open_queue_store(config).open()
    other = storage.open_queue_store(config, owner="w1")  # a worker (this node's, named node-c/w1)
    other.owner = "node-b/w1"  # ... of another node
    other.open(recover=False)
    writer = AuditWriter(AuditTrail(config.audit.path))
    woken: list[int] = []
    server = ConsoleServer(config, spool, audit=writer, wake=lambda: woken.append(1))
    await server.start()
    try:
        held = other.accept("lis@lab.example", ["dr@far.example"], b"Subject: x\r\n\r\nbody\r\n", lifetime=3600)
        free = spool.accept("lis@lab.example", ["ide@far.example"], b"Subject: y\r\n\r\nbody\r\n", lifetime=3600)
        spool.release_claims(spool.owner)
        assert server.address is not None
        url = f"https://127.0.0.1:{server.address[1]}"
        async with client() as http:
            await login(http, url)
            async with http.get(url + "/queue") as page:
                html = await page.text()
            assert page.status == 200 and held in html and free in html
            assert "node-b/w1" in html and "s left" in html  # the lease holder of the claimed message
            assert 'id="node">node node-c<' in html
            async with http.get(f"{url}/queue/{held}") as page:
                html = await page.text()
                token = CSRF.search(html).group(1)
            assert "dr@far.example" in html and 'id="lease">node-b/w1 (' in html
            async with http.post(f"{url}/queue/{held}/retry", data={"csrf": token}, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == f"/queue/{held}?done=retry"
            assert woken == [1]
            async with http.post(f"{url}/queue/{free}/delete", data={"csrf": token}, allow_redirects=False) as resp:
                assert resp.status == 303
        assert spool.get(free) is None and spool.get(held) is not None
        writer.close()  # flushed: the trail is read back
        records = [(r["decision"], r.get("message_id")) for r in AuditTrail(config.audit.path).records()
                   if r["decision"] in ("console-retry", "console-delete")]
        assert records == [("console-retry", held), ("console-delete", free)]
    finally:
        await server.stop()
        writer.close()
        other.close()
        spool.close()
