"""`msgw legacy decode|encode` on files (see ../shared/CLI.md), for operators and interop checks.

The codecs, their key-store option (``--keys``, ``--keyring``) and their own options come from
the codec registry (``gateway.legacy.codec``): a new codec needs no change here. An option of
another codec than ``--codec`` is bad usage.

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
from gateway.legacy.codec import CodecOption, DecodedMessage, LegacyCodec, SignatureStatus
from gateway.legacy.errors import ChecksumMismatch, DecryptionFailed, NotForRecipient

_NO_ANSWERS = (ChecksumMismatch, NotForRecipient, DecryptionFailed)


class _Usage(Exception):
    """Bad combination of options (exit 2)."""


def _fail(code: int, reason: str) -> int:
    print(f"msgw legacy: {reason}", file=sys.stderr)
    return code


def _read_in(path: str) -> bytes:
    return read_input(path, _Usage)


def _write_out(path: str, data: bytes) -> None:
    write_output(path, data, _Usage)


def _given(args: argparse.Namespace, option: CodecOption) -> Any:
    value = getattr(args, option.name, None)
    return None if value is False else value


def _options(args: argparse.Namespace, codec: LegacyCodec, attribute: str) -> dict[str, Any]:
    """The values given for ``codec``'s options of one kind; another codec's option is bad usage."""
    own = {o.name for o in getattr(codec, attribute)}
    values = {o.name: _given(args, o) for o in _all_options(attribute)}
    stray = [name for name, value in values.items() if value is not None and name not in own]
    if stray:
        owners = sorted({c.name for c in _codecs() for o in getattr(c, attribute) if o.name in stray})
        flags = " and ".join("--" + name.replace("_", "-") for name in stray)
        raise _Usage(f"{flags} {'apply' if len(stray) > 1 else 'applies'} to --codec {' or '.join(owners)} only")
    return {name: value for name, value in values.items() if name in own and value is not None}


def _keys(args: argparse.Namespace) -> Any:
    codec = registry.get(args.codec)
    folder = getattr(args, _dest(codec.keys_option), None)
    if not folder:
        raise _Usage(f"--{codec.keys_option} DIR is required with --codec {codec.name}")
    return codec.open_keys(folder, None, _options(args, codec, "config_fields"))


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
    codec = registry.get(args.codec)
    options = _options(args, codec, "encode_options")
    data = _read_in(args.infile)
    result = codec.encode_file(data, args.user, args.to, _keys(args), options)
    _write_out(args.out, result.message)
    for warning in result.warnings:
        print(f"msgw legacy: warning: {warning}", file=sys.stderr)
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


def _dest(option: str) -> str:
    return option.replace("-", "_")


def _codecs() -> tuple[LegacyCodec, ...]:
    return tuple(registry.get(name) for name in registry.names())


def _all_options(attribute: str) -> tuple[CodecOption, ...]:
    """Every codec's options of one kind (``config_fields`` or ``encode_options``), each name once."""
    seen: dict[str, CodecOption] = {}
    for codec in _codecs():
        for option in getattr(codec, attribute):
            seen.setdefault(option.name, option)
    return tuple(seen.values())


def _add_options(p: argparse.ArgumentParser, options: tuple[CodecOption, ...]) -> None:
    for o in options:
        if o.kind == "bool":
            p.add_argument(o.flag, dest=o.name, action="store_true", help=o.help)
        else:
            p.add_argument(o.flag, dest=o.name, type=int if o.kind == "int" else str, help=o.help)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec", required=True, choices=registry.names(), help="the legacy format")
    keys_options: dict[str, str] = {}
    for codec in _codecs():
        keys_options.setdefault(codec.keys_option, codec.keys_help)
    for option, help_ in keys_options.items():
        p.add_argument(f"--{option}", dest=_dest(option), metavar="DIR", help=help_)
    _add_options(p, _all_options("config_fields"))
    p.add_argument("--user", required=True, metavar="ID",
                   help="our identity: Apicrypt user name, or our OpenPGP key's uid/fingerprint")
    p.add_argument("--in", dest="infile", required=True, metavar="MSG", help="input file, - for stdin")
    p.add_argument("--out", required=True, metavar="MSG", help="output file, - for stdout")


def register(subparsers: Any) -> None:
    codecs = ", ".join(registry.names())
    parser = subparsers.add_parser("legacy", help=f"encode/decode legacy encrypted mail ({codecs})")
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
    _add_options(encode, _all_options("encode_options"))
    encode.set_defaults(func=_run(_encode))

