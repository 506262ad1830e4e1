"""Token state for the metrics and `/readyz` (issue 16): `gateway.ops.status` asks a real SoftHSM2
whether each key's token is in a slot, without the PIN; a token that is not there is reported
absent (0), and the answer never shows PIN attributes of the URI."""

from __future__ import annotations

from gateway.ops.status import _token
from tests.pkcs11.conftest import CPS, MODULE, SoftHsm

# Here, beside tests/pkcs11/conftest.py, it shares that session's one SoftHSM: a second copy of the
# fixture imported elsewhere made a second token folder while the PKCS#11 module, loaded once per
# process, kept reading the first — and the other token tests then found other keys.


def test_token_present_and_absent_through_pkcs11(softhsm: SoftHsm) -> None:
    present = _token("cps-sign", softhsm.uri(CPS, key_id="01"), MODULE)
    assert present.present is True and present.problem == ""
    absent = _token("gone", "pkcs11:token=NO-SUCH-CARD;id=%01", MODULE)
    assert absent.present is False
    assert absent.problem == "token not present"
    with_pin = _token("pin-in-uri", softhsm.uri(CPS, key_id="01") + "?pin-value=1357", MODULE)
    assert with_pin.present is False  # the gateway refuses a PIN in a URI: never shown back
    assert "1357" not in with_pin.problem + with_pin.uri
