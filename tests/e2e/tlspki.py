"""The throw-away TLS CA of the tests lives in `gateway.tlstestpki` (``msgw demo`` uses it too)."""

from gateway.tlstestpki import Pair, TestCA

__all__ = ["Pair", "TestCA"]
