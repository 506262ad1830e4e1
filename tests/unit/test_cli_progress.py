"""Progress on long commands (issue 16, item 5): a `rich` bar on stderr when it is a terminal (a real
pseudo-terminal here), nothing at all when it is a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

from tests.conftest import MSGW
from tests.e2e.harness import write_config

ROWS = 3000


def _csv(path: Path) -> Path:
    lines = ["address,capability,rpps,last_name"]
    lines += [f"dr{i}@cabinet{i % 50}.sante.test,trusted-domain,{10000000000 + i},NOM{i}" for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _on_pty(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal on stderr showed, escapes stripped)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([MSGW, *args], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    return code, out, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))


def test_directory_import_shows_a_bar_on_a_terminal_and_nothing_in_a_pipe(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9)
    rows = _csv(tmp_path / "rows.csv")
    args = ("directory", "import", "--format", "csv", "--source", "csv:lab", str(rows), "--config", str(setup.config))
    code, out, shown = _on_pty(*args)
    assert code == 0, shown
    assert "importing rows.csv" in shown and "100%" in shown and f"{ROWS}/{ROWS}" in shown, shown
    assert f"added {ROWS}," in out and "━" not in out  # the summary alone on stdout

    piped = subprocess.run([MSGW, *args], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0
    assert piped.stderr == ""  # no bar, no escape sequence, nothing
    assert piped.stdout.startswith(f"csv: added 0, updated 0, removed 0, unchanged {ROWS},")
    assert piped.stdout.count("\n") == 1


def test_audit_verify_shows_a_spinner_on_a_terminal_only(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9)
    args = ("audit", "verify", "--config", str(setup.config))
    code, out, shown = _on_pty(*args)
    assert code == 0, shown
    assert "verifying the audit trail's hash chain" in shown, shown
    piped = subprocess.run([MSGW, *args], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout == out
