"""RFC 7512 parsing: strict, percent-decoding, no PIN inside a URI."""

from __future__ import annotations

import pytest

from gateway.errors import PermanentError
from gateway.smime.pkcs11 import Pkcs11Uri, UriError, parse_uri


def test_parse_full_uri() -> None:
    uri = parse_uri(
        "pkcs11:token=CPS%20de%20JEAN;manufacturer=ASIP;serial=0123;object=Signature;"
        "type=private;id=%01%A0;slot-id=3?module-path=/usr/lib/x.so&pin-source=file:/run/pin"
    )
    assert uri.token == "CPS de JEAN"
    assert uri.manufacturer == "ASIP"
    assert uri.serial == "0123"
    assert uri.object == "Signature"
    assert uri.type == "private"
    assert uri.id == b"\x01\xa0"
    assert uri.slot_id == 3
    assert uri.module_path == "/usr/lib/x.so"
    assert uri.pin_source == "file:/run/pin"
    assert uri.token_selector.token == "CPS de JEAN"


def test_format_round_trip() -> None:
    uri = Pkcs11Uri(token="CPS de JEAN;x", object="Sig/1", id=b"\x01\xff", module_path="/usr/lib/a b.so")
    text = str(uri)
    assert text.startswith("pkcs11:")
    assert "id=%01%ff" in text
    assert parse_uri(text) == uri


@pytest.mark.parametrize(
    "text",
    [
        "file:/etc/key.pem",
        "pkcs11:tokn=CPS",  # typo must not match every token
        "pkcs11:token=A;token=B",
        "pkcs11:token",
        "pkcs11:type=secret",
        "pkcs11:slot-id=abc",
        "pkcs11:token=A?module-nam=x",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(UriError) as info:
        parse_uri(text)
    assert isinstance(info.value, PermanentError)


def test_pin_value_refused_and_not_echoed() -> None:
    with pytest.raises(UriError) as info:
        parse_uri("pkcs11:token=A?pin-value=987654")
    assert "987654" not in str(info.value)


def test_vendor_attributes_ignored() -> None:
    assert parse_uri("pkcs11:token=A;x-vendor=1?x-foo=bar").token == "A"
