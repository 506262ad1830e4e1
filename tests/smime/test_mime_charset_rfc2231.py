"""A charset given as an RFC 2231 parameter (``charset*=utf-8''x``) reaches the stdlib's
``bytes.decode`` as a tuple (TypeError): found by atheris, it must be a typed MalformedSmime."""

from __future__ import annotations

import pytest

from gateway.smime import mime
from gateway.smime.errors import MalformedSmime

ENTITY = (b"Content-Type: text/plain; charset*=utf-8''x\r\n"
          b"Content-Transfer-Encoding: 8bit\r\n\r\n"
          b"r\xc3\xa9sultat TEST\r\n")


def test_an_rfc2231_charset_is_a_typed_error_not_a_crash() -> None:
    with pytest.raises(MalformedSmime, match="charset"):
        mime.content_entity(ENTITY)
