"""`msgw init` lists what it made, says the PKI is TEST only, and a second run keeps it all."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import MSGW


def _init(folder: Path) -> list[str]:
    out = subprocess.run([MSGW, "init", "--dir", str(folder)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_init_lists_every_file_and_folder_it_made_and_says_test_only(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "default"
    lines = _init(folder)
    text = "\n".join(lines)
    assert "TEST" in lines[0] and "never use it in production" in lines[0]
    assert re.search(r"made +\S+/pki/ \(\d+ files\) +the TEST PKI.*TEST ONLY", text), text
    listed = [line.split()[1].rstrip(",/") for line in lines if line.startswith("  ")]
    assert all(line.split()[0] == "made" for line in lines if line.startswith("  ")), text
    # everything init left in the state folder and the first-run folder is named in the listing
    made = {str(p) for p in (*folder.iterdir(), *(tmp_path / "var").iterdir())} - {str(folder)}
    named = set(listed) | {str(folder / name) for name in ("tls-key.pem", "demo.hash", "console-admin.hash",
                                                           "TEST-doctor.cert.pem")} | {str(tmp_path / "var" / "drop")}
    assert made <= named, made - named
    assert str(folder / "tls-cert.pem") in listed and str(folder / "demo.password") in listed
    assert lines[-1] == f"Demo login: demo@msgw.localhost, password in {folder / 'demo.password'}"
    again = _init(folder)
    assert all(line.split()[0] == "kept" for line in again if line.startswith("  ")), again
