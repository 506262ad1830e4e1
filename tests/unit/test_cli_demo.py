"""`msgw demo` keeps the gateway's log lines out of its story (issue 16, item 5): as a terminal shows
it (stdout and stderr on one stream), the steps come first with no log line among them; the log
lines the demo provokes follow, each labelled."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import MSGW

HEADER = "msgw demo: the gateway's log during the demo"


def test_demo_story_has_no_log_line_and_the_log_follows_labelled(tmp_path: Path) -> None:
    out = subprocess.run([MSGW, "demo"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout
    lines = out.stdout.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    story, log = lines[:cut], lines[cut + 1:]
    assert story[-1] == "==> demo finished: OK"
    assert all(line.startswith("==>") for line in story), [ln for ln in story if not ln.startswith("==>")]
    assert log and all(line.startswith("  [gateway log] ") for line in log), log
    assert any("rcpt-refused" in line for line in log)  # the refusal of step 2 is logged, after the story


def test_demo_keep_names_the_log_file(tmp_path: Path) -> None:
    out = subprocess.run([MSGW, "demo", "--keep"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout
    last = out.stdout.splitlines()[-1]
    assert last.startswith("==> gateway log: ") and last.endswith("gateway.log"), last
    log = Path(last.rsplit(" in ", 1)[1])
    assert "rcpt-refused" in log.read_text()
    shutil.rmtree(log.parent, ignore_errors=True)
