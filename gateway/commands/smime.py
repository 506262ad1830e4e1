"""`msgw smime sign|verify|encrypt|decrypt` on files (see ../shared/CLI.md).

Exit codes: 0 success, 1 a "no" (signature refused, not for us, cannot decrypt), 2 bad usage
or bad input (unreadable file, wrong password, not S/MIME). One line on stderr for 1 and 2.
Keys: PEM / PKCS#12 files (password from --password-file or --password-env) or a PKCS#11
URI (``pkcs11:...`` with --module and a PIN option).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.commands.common import read_input, write_output
from gateway.errors import GatewayError
from gateway.smime.engine import (
    Verifier,
    decrypt_message,
    encrypt_message,
    sign_message,
    unwrap_message,
    verify_message,
)
from gateway.smime.errors import KeyLoadError, MalformedSmime, NotSigned, SmimeError, UnsupportedAlgorithm
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.softkeys import load_certificates, load_key
from gateway.smime.trust import TrustStore

_BAD_INPUT = (MalformedSmime, KeyLoadError, UnsupportedAlgorithm)


def _fail(code: int, reason: str) -> int:
    print(f"msgw smime: {reason}", file=sys.stderr)
    return code


def _read_in(path: str) -> bytes:
    return read_input(path, KeyLoadError)


def _write_out(path: str, data: bytes) -> None:
    write_output(path, data, KeyLoadError)


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", help="certificate (PEM/DER); optional with a PKCS#12 key")
    p.add_argument("--key", required=True, help="PEM or PKCS#12 key file, or a pkcs11: URI")
    p.add_argument("--password-file", help="file holding the key file password")
    p.add_argument("--password-env", help="environment variable holding the key file password")
    p.add_argument("--module", help="PKCS#11 module path (for a pkcs11: key)")
    p.add_argument("--pin-file", help="file holding the PKCS#11 token PIN")
    p.add_argument("--pin-env", help="environment variable holding the PKCS#11 token PIN")
    p.add_argument("--pin-stdin", action="store_true", help="read the PKCS#11 token PIN from stdin")


def _open_key(args: argparse.Namespace, usage: str, chain: str | None = None) -> Any:
    if args.key.startswith("pkcs11:"):
        from gateway.smime.pkcs11 import open_token_key, pin_source

        cert = load_certificates(args.cert)[0] if args.cert else None
        chain_certs = load_certificates(chain) if chain else None
        return open_token_key(args.key, module=args.module, usage=usage, certificate=cert, chain=chain_certs,
                              pin=pin_source(pin_file=args.pin_file, pin_env=args.pin_env,
                                             pin_stdin=args.pin_stdin))
    return load_key(args.key, args.cert, chain, password_file=args.password_file,
                    password_env=args.password_env)


def _close(key: Any) -> None:
    close = getattr(key, "close", None)
    if callable(close):
        close()


def _run(action: Callable[[], Coroutine[Any, Any, int]], as_json: bool = False) -> int:
    error: GatewayError
    try:
        return asyncio.run(action())
    except _BAD_INPUT as exc:
        code, error = 2, exc
    except SmimeError as exc:
        code, error = 1, exc
    except GatewayError as exc:  # key store, token or PIN trouble: the input or set-up is wrong
        code, error = 2, exc
    if as_json:
        print(json.dumps({"valid": False, "code": error.code, "reason": str(error),
                          "temporary": error.temporary}))
    return _fail(code, f"{error} [{error.code}]")


def cmd_sign(args: argparse.Namespace) -> int:
    async def act() -> int:
        message = _read_in(args.infile)
        key = _open_key(args, "sign", args.chain)
        try:
            out = await sign_message(message, key, opaque=args.opaque, pss=args.pss)
        finally:
            _close(key)
        _write_out(args.outfile, out)
        return 0
    return _run(act)


def cmd_verify(args: argparse.Namespace) -> int:
    async def act() -> int:
        message = _read_in(args.infile)
        crls = CrlSource(files=args.crl or (), fetcher=None if args.no_network else http_fetch)
        ocsp = OcspSource() if args.ocsp and not args.no_network else None
        verifier = Verifier(TrustStore.from_directory(args.trust), crls, require_from_match=not args.no_from_check,
                            ocsp=ocsp)
        result = await verify_message(message, verifier, sender=args.sender)
        if args.outfile:
            _write_out(args.outfile, result.message)
        sig = result.signatures[-1]
        if args.json:
            print(json.dumps({"layers": list(result.layers), "signatures": [s.as_dict() for s in result.signatures]},
                             indent=2, ensure_ascii=False))
        else:
            print(f"signature OK: {sig.signer_subject}", file=sys.stderr)
        return 0
    return _run(act, as_json=args.json)


def cmd_encrypt(args: argparse.Namespace) -> int:
    async def act() -> int:
        message = _read_in(args.infile)
        certs = [load_certificates(path)[0] for path in args.recipient_cert]
        sender = load_certificates(args.sender_cert)[0] if args.sender_cert else None
        out = encrypt_message(message, certs, cipher=args.cipher, key_transport=args.key_transport,
                              recipient_id="ski" if args.ski else "issuer-serial", sender_copy=sender)
        _write_out(args.outfile, out)
        return 0
    return _run(act)


def cmd_decrypt(args: argparse.Namespace) -> int:
    """Decrypt; with --trust also verify the signature inside (every layer, as the gateway does
    for its own mailboxes) and write the message the reader sees, its protected headers restored."""
    async def act() -> int:
        message = _read_in(args.infile)
        key = _open_key(args, "decrypt")
        note = None
        try:
            if args.trust is None:
                out = await decrypt_message(message, [key])
            else:
                crls = CrlSource(files=args.crl or (), fetcher=None if args.no_network else http_fetch)
                verifier = Verifier(TrustStore.from_directory(args.trust), crls)
                result = await unwrap_message(message, keys=[key], verifier=verifier)
                if not result.signatures:
                    raise NotSigned("message is not signed")
                out = result.message
                note = f"decrypted ({'+'.join(result.layers)}); signature OK: {result.signatures[-1].signer_subject}"
        finally:
            _close(key)
        _write_out(args.outfile, out)
        if note:
            print(note, file=sys.stderr)
        return 0
    return _run(act)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("smime", help="S/MIME sign, verify, encrypt, decrypt on files")
    sub = p.add_subparsers(dest="smime_command", required=True)

    s = sub.add_parser("sign", help="sign a message (multipart/signed, or --opaque)")
    _key_options(s)
    s.add_argument("--chain", help="PEM file of intermediate certificates to include")
    s.add_argument("--opaque", action="store_true", help="application/pkcs7-mime signed-data")
    s.add_argument("--pss", action="store_true", help="RSA-PSS instead of PKCS#1 v1.5")
    s.add_argument("--in", dest="infile", required=True, help="message to sign, - for stdin")
    s.add_argument("--out", dest="outfile", required=True, help="signed message, - for stdout")
    s.set_defaults(func=cmd_sign)

    v = sub.add_parser("verify", help="verify a signed message against a trust store")
    v.add_argument("--trust", required=True, help="folder of trusted root and intermediate certificates")
    v.add_argument("--crl", action="extend", nargs="+", help="CRL file(s) (DER or PEM; repeatable)")
    v.add_argument("--no-network", action="store_true", help="do not fetch CRLs from distribution points")
    v.add_argument("--ocsp", action="store_true",
                   help="also ask the certificates' OCSP responders (either a CRL or an OCSP answer suffices)")
    v.add_argument("--from", dest="sender", help="expected signer address (default: the From header)")
    v.add_argument("--no-from-check", action="store_true", help="do not require the signer to match From")
    v.add_argument("--in", dest="infile", required=True, help="signed message, - for stdin")
    v.add_argument("--out", dest="outfile", help="write the verified content here, - for stdout")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("encrypt", help="encrypt a message to recipient certificates")
    e.add_argument("--recipient-cert", action="append", required=True,
                   help="recipient certificate (PEM/DER; repeatable)")
    e.add_argument("--sender-cert", help="also encrypt to this certificate (readable sent copy)")
    e.add_argument("--cipher", choices=("aes256-cbc", "aes256-gcm"), default="aes256-cbc",
                   help="content cipher (default: %(default)s)")
    e.add_argument("--key-transport", choices=("oaep", "pkcs1v15"), default="pkcs1v15",
                   help="RSA key transport (default: %(default)s)")
    e.add_argument("--ski", action="store_true", help="name recipients by subjectKeyIdentifier")
    e.add_argument("--in", dest="infile", required=True, help="message to encrypt, - for stdin")
    e.add_argument("--out", dest="outfile", required=True, help="encrypted message, - for stdout")
    e.set_defaults(func=cmd_encrypt)

    d = sub.add_parser("decrypt", help="decrypt a message with a local key (--trust: and verify its signature)")
    _key_options(d)
    d.add_argument("--trust", help="folder of trusted root and intermediate certificates: also verify the "
                                   "signature inside and write the message as its reader sees it")
    d.add_argument("--crl", action="extend", nargs="+", help="CRL file(s) for --trust (DER or PEM; repeatable)")
    d.add_argument("--no-network", action="store_true", help="with --trust: do not fetch CRLs from distribution points")
    d.add_argument("--in", dest="infile", required=True, help="the encrypted message (- for standard input)")
    d.add_argument("--out", dest="outfile", default="-", help="where to write the result (default: standard output)")
    d.set_defaults(func=cmd_decrypt)
