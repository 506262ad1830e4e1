"""The template-built SignedData signed by a key on a PKCS#11 token (SoftHSM2, the fixtures of
tests/pkcs11) is byte for byte the asn1crypto oracle's, and the token signed exactly the DER
SET OF signed attributes (RSA PKCS#1 v1.5 is deterministic: one signature for one input).
The software-key corpus is tests/smime/test_cms_template.py."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from gateway.smime.cms_reference import sign_content_reference
from gateway.smime.cms_sign import sign_content
from gateway.smime.cms_template import signer_template
from gateway.smime.pkcs11 import FilePin, TokenKey, open_token_key
from tests.pkcs11.conftest import CPS, MODULE, SoftHsm

WHEN = dt.datetime(2026, 12, 3, 16, 30, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def token_key(softhsm: SoftHsm, pin_file: Path) -> TokenKey:
    """The CPS card's signing key (as test_cms.py: logging in to the LAB token here would log it in
    for test_keycheck's "PIN missing" case too, the token session being shared)."""
    return open_token_key(softhsm.uri(CPS, "Signature"), module=MODULE, pin=FilePin(pin_file), usage="sign")


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("size", [0, 1, 128, 1024, 20 * 1024, 65536])
async def test_token_signed_data_from_template_is_the_oracle_s(token_key: TokenKey, detached: bool,
                                                                size: int) -> None:
    content = os.urandom(size)
    fast = await sign_content(content, token_key, detached=detached, signing_time=WHEN)
    oracle = await sign_content_reference(content, token_key, detached=detached, signing_time=WHEN)
    assert fast == oracle
    assert signer_template(token_key.certificate, token_key.chain, "sha256", False).padding == "pkcs1v15"
