"""S/MIME engine (RFC 8551 / CMS RFC 5652): a pure library, no SMTP, no routing.

- `engine`: sign_message, encrypt_message, sign_and_encrypt_message, verify_message,
  decrypt_message, unwrap_message, Verifier (strict trust policy).
- `cms_sign`, `cms_verify`, `cms_envelope`, `cms_decrypt`: the CMS layer on DER/BER bytes
  (hand-built with asn1crypto + cryptography primitives; each module says why).
- `protect`: the outgoing protection a gateway applies, one call per form: `protect_smime`
  (sign + encrypt + header protection), `sign_protected` (the trust-space-TLS copy).
- `headers`: header protection — the outer allow-list and the protected headers inside.
- `mime`: canonical entities, multipart/signed and pkcs7-mime framing on raw bytes.
- `trust`, `revocation`: trust store folder, path validation (pyhanko-certvalidator), CRLs.
- `identity`: e-mail addresses and RPPS/ADELI/FINESS/SIRET read from certificates.
- `softkeys`: PEM / PKCS#12 keys behind `keyapi` (PKCS#11 keys: `pkcs11`; config key
  references to either: `keystore`).
- `result`, `errors`: VerificationResult / UnwrapResult records and typed refusals.
- `testpki`: the IGC-Santé-shaped TEST PKI generator (tests and demo only).

Nothing is imported here so that `gateway.smime.pkcs11` or `keyapi` stay cheap to import.
"""
