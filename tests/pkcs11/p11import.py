"""Import an RSA private key with exact CKA_SIGN / CKA_DECRYPT flags (run as a subprocess).

`pkcs11-tool --write-object --type privkey` (OpenSC 0.23) sets both sign and decrypt whatever
`--usage-*` says, so single-use keys, the norm on CPS cards, are imported this way. It runs
in its own process so the test process keeps one module thread and one C_Initialize.

Usage: python -m tests.pkcs11.p11import MODULE TOKEN KEY.der ID_HEX LABEL sign|decrypt  (PIN on stdin)
"""

from __future__ import annotations

import sys

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, MechanismFlag
from pkcs11.util.rsa import decode_rsa_private_key


def main(argv: list[str]) -> int:
    module, token_label, key_file, key_id, label, usage = argv
    pin = sys.stdin.readline().rstrip("\n")
    with open(key_file, "rb") as f:
        key = serialization.load_der_private_key(f.read(), None)
    pkcs1 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    caps = MechanismFlag.SIGN if usage == "sign" else MechanismFlag.DECRYPT
    attrs = decode_rsa_private_key(pkcs1, caps)
    attrs.update(
        {
            Attribute.ID: bytes.fromhex(key_id),
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }
    )
    token = pkcs11.lib(module).get_token(token_label=token_label)
    with token.open(rw=True, user_pin=pin) as session:
        session.create_object(attrs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
