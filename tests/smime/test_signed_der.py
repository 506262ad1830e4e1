"""The SignedData DER we assemble by hand (asn1crypto re-encoded the whole certificate chain at
each signature) is exactly what asn1crypto itself would encode, for every kind of key, chain
and content size; and the certificates it carries are the signer's and its chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives import serialization

from gateway.smime.cms_sign import sign_content
from gateway.smime.softkeys import load_pem_key


def _der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("entity,pss", [("org_sign", False), ("org_sign", True), ("org_sign_ec", False),
                                        ("person_sign", False)])
@pytest.mark.parametrize("detached", [True, False])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65536, 300_001])
@pytest.mark.parametrize("chain", [True, False])
def test_hand_assembled_signed_data_is_canonical(pki, entity, pss, detached, size, chain) -> None:
    entry = pki[entity]
    key = load_pem_key(entry.key_path, entry.cert_path, entry.chain_path if chain else None)
    content = os.urandom(size)
    when = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    der = asyncio.run(sign_content(content, key, detached=detached, pss=pss, signing_time=when))
    info = cms.ContentInfo.load(der)
    assert info.dump(force=True) == der  # every tag, length and SET order as asn1crypto's DER encoder
    signed = info["content"]
    assert signed["version"].native == "v1"
    assert [a["algorithm"].native for a in signed["digest_algorithms"]] == ["sha256"]
    assert signed["encap_content_info"]["content"].native == (None if detached else content)
    carried = sorted(c.chosen.dump() for c in signed["certificates"])
    assert carried == sorted(_der(c) for c in (key.certificate, *key.chain))
    assert len(signed["signer_infos"]) == 1
