"""The EnvelopedData/AuthEnvelopedData DER we assemble by hand (to keep big messages from being
copied at every nesting level) is exactly what asn1crypto itself would encode."""

from __future__ import annotations

import os

import pytest
from asn1crypto import cms

from gateway.smime.cms_envelope import encrypt_content


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("rid", ["issuer-serial", "ski"])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 111, 112, 127, 128, 255, 256, 65519, 65536, 300_001])
def test_hand_assembled_der_is_canonical(pki, cipher, rid, size) -> None:
    der = encrypt_content(os.urandom(size), [pki["person_encrypt"].cert, pki["org_encrypt"].cert], cipher=cipher,
                          recipient_id=rid)
    info = cms.ContentInfo.load(der)
    assert info.dump(force=True) == der  # every length and tag as asn1crypto's DER encoder writes them
    body = info["content"]
    eci = body["encrypted_content_info" if cipher == "aes256-cbc" else "auth_encrypted_content_info"]
    expected = size + 16 - size % 16 if cipher == "aes256-cbc" else size
    assert len(eci["encrypted_content"].native) == expected
    assert len(body["recipient_infos"]) == 2
    if cipher == "aes256-gcm":
        assert len(body["mac"].native) == 16
