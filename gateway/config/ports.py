"""`msgw serve --listen-base B`: the embedded default's loopback ports moved to B, B+1, ...

Why on the TOML document and not on the parsed config: the shifted document is then read and
checked like any other (one parser, the same problems), and a section another module adds
(`[metrics]`, `[console]`) needs no code here beyond its row in `DEFAULT_PORTS`. Only the
embedded default is shifted: a config file names its own ports (`msgw serve -c` refuses the option).
"""

from __future__ import annotations

from typing import Any

#: (table path in the TOML document, key, offset from the base, the listener's name in messages).
#: A row whose table is not in the document is skipped, so a section may be added to
#: `defaults/default.toml` before or after its row here.
DEFAULT_PORTS: tuple[tuple[tuple[str, ...], str, int, str], ...] = (
    (("listeners", "relay"), "port", 0, "relay"),
    (("listeners", "submission"), "port", 1, "submission"),
    (("intake", "mllp"), "port", 2, "MLLP"),
    (("metrics",), "port", 3, "metrics"),
    (("console",), "port", 4, "console"),
)

#: How many consecutive ports `--listen-base` takes.
PORT_SPAN = max(offset for _, _, offset, _ in DEFAULT_PORTS) + 1


def listen_base_problem(base: int) -> str | None:
    """Why `base` cannot be a listen base (None when it can): every shifted port must exist."""
    if not 1 <= base <= 65536 - PORT_SPAN:
        return f"--listen-base must be between 1 and {65536 - PORT_SPAN} (it takes {PORT_SPAN} ports: " \
               f"B to B+{PORT_SPAN - 1})"
    return None


def shift_ports(data: dict[str, Any], base: int) -> dict[str, Any]:
    """The embedded default's document with its listeners on `base` + offset (in place; returned)."""
    for path, key, offset, _ in DEFAULT_PORTS:
        table: Any = data
        for part in path:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table[key] = base + offset
    return data
