"""A real LMTP server (asyncio streams, a real socket) that reads DATA in chunks and keeps only
counts, so a test's memory measurement sees the client's allocations, not the server's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class DiscardStats:
    transactions: int = 0
    recipients: list[str] = field(default_factory=list)
    data_bytes: int = 0


async def start_discard_lmtp() -> tuple[asyncio.AbstractServer, int, DiscardStats]:
    stats = DiscardStats()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 discard lmtp\r\n")
        rcpts: list[str] = []
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-discard\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
            elif verb == b"MAIL":
                rcpts = []
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                writer.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                tail = b""
                while not tail.endswith(b"\r\n.\r\n"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    stats.data_bytes += len(chunk)
                    tail = (tail + chunk)[-5:]
                stats.transactions += 1
                stats.recipients += rcpts
                writer.write(b"".join(f"250 2.0.0 <{r}> stored\r\n".encode() for r in rcpts))
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"500 what\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], stats
