"""The one rule for private files (keys, PINs, passwords, queued mail): no access for group or others.

Shared by the start-up key checks (`gateway.smime.keycheck`), the Apicrypt key store
(`gateway.legacy.keystore`) and the durable-file helper (`gateway.fsutil`), which must not
import each other's packages.
"""

from __future__ import annotations

import stat

#: Mail, keys, journals: the gateway's user only.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: The audit trail and its head: an auditors' group may read them (never write).
GROUP_READABLE_FILE = 0o640


def loose_mode(mode: int) -> str | None:
    """The permissions as text ("0644") when group or others have any access (0600 or stricter
    is needed), else None."""
    return f"{stat.S_IMODE(mode):04o}" if mode & 0o077 else None
