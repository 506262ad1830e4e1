"""`msgw legacy decode|encode` on files (see ../shared/CLI.md), for operators and interop checks.

Exit codes: 0 success, 1 a "no" (checksum mismatch, not for us, keys that do not decrypt it,
a bad signature, or --require-signature unmet), 2 bad usage or bad input (malformed armor,
missing key file, unreadable file). One line on stderr for 1 and 2; never message content.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.commands.common import read_input, write_output
from gateway.errors import GatewayError
from gateway.legacy import codec as registry
from gateway.legacy.codec import DecodedMessage, SignatureStatus
from gateway.legacy.errors import ChecksumMismatch, DecryptionFailed, NotForRecipient

_NO_ANSWERS = (ChecksumMismatch, NotForRecipient, DecryptionFailed)
CODECS = ("apicrypt1", "openpgp")


class _Usage(Exception):
    """Bad combination of options (exit 2)."""


def _fail(code: int, reason: str) -> int:
    print(f"msgw legacy: {reason}", file=sys.stderr)
    return code


def _read_in(path: str) -> bytes:
    return read_input(path, _Usage)


def _write_out(path: str, data: bytes) -> None:
    write_output(path, data, _Usage)


def _keys(args: argparse.Namespace) -> Any:
    if args.codec == "apicrypt1":
        from gateway.legacy.keystore import ApicryptKeyStore

        if not args.keys:
            raise _Usage("--keys DIR is required with --codec apicrypt1")
        return ApicryptKeyStore(args.keys)
    from gateway.legacy.openpgp import OpenPgpKeyring

    if not args.keyring:
        raise _Usage("--keyring DIR is required with --codec openpgp")
    return OpenPgpKeyring(args.keyring, passphrase_file=args.passphrase_file, passphrase_env=args.passphrase_env)


def _report(decoded: DecodedMessage) -> dict[str, Any]:
    return {"codec": decoded.codec, "sender": decoded.sender, "sender_authenticated": decoded.sender_authenticated,
            "recipients": list(decoded.recipients), "signature": decoded.signature.value,
            "signer_fingerprint": decoded.signer_fingerprint, "integrity_protected": decoded.integrity_protected,
            "attachments": [a.filename for a in decoded.attachments], "notes": list(decoded.notes)}


def _decode(args: argparse.Namespace) -> int:
    if args.json and args.out == "-":
        raise _Usage("--json prints on stdout: give --out a file")
    codec = registry.get(args.codec)
    decoded = codec.decode(_read_in(args.infile), _keys(args), recipient=args.user)
    if decoded.signature is SignatureStatus.BAD:
        return _fail(1, "the signature does NOT match the content")
    if args.require_signature and not decoded.sender_authenticated:
        return _fail(1, f"sender not authenticated (signature: {decoded.signature.value})")
    _write_out(args.out, decoded.content)
    if args.json:
        print(json.dumps(_report(decoded), indent=2))
    else:
        state = "authenticated" if decoded.sender_authenticated else "NOT authenticated"
        print(f"msgw legacy: decoded; sender {decoded.sender} ({state}); {len(decoded.recipients)} recipient(s)",
              file=sys.stderr)
    return 0


def _encode(args: argparse.Namespace) -> int:
    data = _read_in(args.infile)
    keys = _keys(args)
    if args.codec == "apicrypt1":
        from gateway.legacy.apicrypt1 import CODEC as APICRYPT

        if args.raw:
            result = APICRYPT.encode_text(data, args.user, args.to, keys, year=args.year)
        else:
            result = APICRYPT.encode_with_report(data, args.user, args.to, keys, year=args.year)
        _write_out(args.out, result.message)
        for name in result.wrapped:
            print(f"msgw legacy: warning: the key stream of {name} wrapped (key material reused)", file=sys.stderr)
        return 0
    if args.raw or args.year:
        raise _Usage("--raw and --year apply to --codec apicrypt1 only")
    from gateway.legacy.openpgp import CODEC as OPENPGP

    _write_out(args.out, OPENPGP.encode(data, args.user, args.to, keys, sign_only=args.sign_only))
    return 0


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except _Usage as exc:
            return _fail(2, str(exc))
        except _NO_ANSWERS as exc:
            return _fail(1, str(exc))
        except GatewayError as exc:
            return _fail(2, str(exc))
    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec", required=True, choices=CODECS)
    p.add_argument("--keys", metavar="DIR", help="apicrypt1 key folder (files <user>.<YY>, Master.<YY>; mode 0600)")
    p.add_argument("--keyring", metavar="DIR", help="openpgp: GnuPG home folder")
    p.add_argument("--passphrase-file", help="openpgp: file holding our secret key's passphrase")
    p.add_argument("--passphrase-env", help="openpgp: environment variable holding that passphrase")
    p.add_argument("--user", required=True, metavar="ID",
                   help="our identity: Apicrypt user name, or our OpenPGP key's uid/fingerprint")
    p.add_argument("--in", dest="infile", required=True, metavar="MSG", help="input file, - for stdin")
    p.add_argument("--out", required=True, metavar="MSG", help="output file, - for stdout")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("legacy", help="encode/decode legacy encrypted mail (apicrypt1, openpgp)")
    sub = parser.add_subparsers(dest="legacy_command", required=True)
    decode = sub.add_parser("decode", help="decrypt (and verify) a legacy message into MIME")
    _common(decode)
    decode.add_argument("--json", action="store_true", help="print what was established about the sender")
    decode.add_argument("--require-signature", action="store_true",
                        help="answer no (exit 1) unless the sender is authenticated (never true for apicrypt1)")
    decode.set_defaults(func=_run(_decode))
    encode = sub.add_parser("encode", help="encode a MIME message for legacy recipients")
    _common(encode)
    encode.add_argument("--to", action="append", required=True, metavar="ID",
                        help="recipient (Apicrypt user name / OpenPGP uid); repeat for several")
    encode.add_argument("--year", type=int, help="apicrypt1: key year (default: the current year)")
    encode.add_argument("--raw", action="store_true", help="apicrypt1: input is bare text, output a bare armor")
    encode.add_argument("--sign-only", action="store_true", help="openpgp: multipart/signed, not encrypted")
    encode.set_defaults(func=_run(_encode))

