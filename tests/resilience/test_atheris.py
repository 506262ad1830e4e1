"""atheris (coverage-guided) on the outside-input readers, seeded with our own valid samples.

Each target runs in its own process for ``5000 × MSGW_RESILIENCE_SCALE`` inputs (CI: 5,000, to
keep `.ci/run` within its budget; ``MSGW_RESILIENCE_SCALE=4`` is the 20,000 of before); the test fails
when libFuzzer reports a crash (an exception other than our typed errors) or a hang (over 10 s
for one input). See ``atheris_targets.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.resilience.conftest import _REPORT, SCALE
from tests.resilience.test_fuzz import payload_seeds, smime_kit

ROOT = Path(__file__).resolve().parents[2]
RUNS = 5000 * SCALE


def _seeds(target: str) -> list[bytes]:
    if target in ("hprim", "cda", "xdm", "sidecar"):
        return payload_seeds()[target]
    if target == "hl7":
        return payload_seeds()["hl7"]
    if target == "armor":
        from gateway.legacy.apicrypt1_format import armor

        return [armor(b"TEST payload " * 20).encode("ascii")]
    if target == "mime":
        return smime_kit().messages
    return smime_kit().signed_der


@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", ["hprim", "hl7", "cda", "xdm", "sidecar", "armor", "mime", "cms-signed"])
def test_atheris_target(target: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        unavailable("atheris is not installed (pip install -e '.[test]' on Linux x86_64)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, seed in enumerate(_seeds(target)):
        (corpus / f"seed-{n}").write_bytes(seed)
    env = {**os.environ, "MSGW_ATHERIS_TARGET": target, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tests.resilience.atheris_targets", f"-runs={RUNS}",
                          "-max_len=16384", "-len_control=0", "-timeout=10", "-seed=1", "-print_final_stats=1",
                          str(corpus)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=580)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    tail = "\n".join(out.stderr.splitlines()[-40:])
    assert out.returncode == 0 and not crashes, f"atheris found a problem in {target}: {crashes}\n{tail}"
    assert "Done" in out.stderr, tail
    _REPORT.inputs[f"atheris {target}"] += RUNS
