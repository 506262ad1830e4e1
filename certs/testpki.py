#!/usr/bin/env python3
"""Generate the IGC-Santé-shaped TEST PKI (TEST ONLY): ``python certs/testpki.py DIR``.

Thin wrapper: the generator is ``gateway.smime.testpki`` (importable by tests and the demo).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.smime.testpki import TestPKI, build_test_pki, main  # noqa: E402

__all__ = ["TestPKI", "build_test_pki", "main"]

if __name__ == "__main__":
    sys.exit(main())
