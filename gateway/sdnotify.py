"""Tell systemd how the service is doing (`sd_notify(3)`): ``READY=1``, ``STOPPING=1``, ``STATUS=…``.

Hand-written rather than a dependency (``systemd-python`` needs libsystemd headers to build,
``sdnotify`` is unmaintained): the protocol is one datagram of ``KEY=value`` lines on the Unix
socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket). Without the
variable (not under systemd, or a unit that is not ``Type=notify``) every call is a no-op.

Who sends: the process systemd started (``NotifyAccess=main``). With workers, the master sends
``READY=1`` once every worker reported its listeners up (`gateway.workers.Supervisor`); workers
never talk to systemd.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=…"``) in one datagram; False when there is nowhere
    to send or the socket refused (systemd treats a missing notification as a start timeout, so a
    failure here must never stop the gateway)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def ready(status: str) -> bool:
    """Every listener accepts connections: systemd may start what is ordered after us."""
    return notify("READY=1", f"STATUS={status}")


def stopping() -> bool:
    """Shutdown began (listeners close, in-flight work gets `spool.shutdown_grace`)."""
    return notify("STOPPING=1", "STATUS=stopping")


__all__ = ["notify", "ready", "stopping"]
