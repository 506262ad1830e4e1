"""`msgw --version` and the Makefile's corpus setting (issue 16's first-run polish)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"msgw {version('msgw')}"


def test_make_sets_msgw_corpus_like_ci_run() -> None:
    """`make test` must not skip the corpus tests silently: with the samples beside the project,
    the Makefile exports MSGW_CORPUS as .ci/run does; without them it stays empty."""
    require_tool("make")
    env = {k: v for k, v in os.environ.items() if k != "MSGW_CORPUS"}
    done = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "show-corpus:\n\t@echo \"[$$MSGW_CORPUS]\"",
                           "show-corpus"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    samples = (ROOT.parent / "shared" / "samples")
    expected = str(samples.resolve()) if samples.is_dir() else ""
    assert done.stdout.strip() == f"[{expected}]"
