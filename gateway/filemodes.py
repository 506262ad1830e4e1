"""The one rule for private files (keys, PINs, passwords): no access for group or others.

Shared by the start-up key checks (`gateway.smime.keycheck`) and the Apicrypt key store
(`gateway.legacy.keystore`), which must not import each other's packages.
"""

from __future__ import annotations

import stat


def loose_mode(mode: int) -> str | None:
    """The permissions as text ("0644") when group or others have any access (0600 or stricter
    is needed), else None."""
    return f"{stat.S_IMODE(mode):04o}" if mode & 0o077 else None
