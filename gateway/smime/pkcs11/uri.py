"""PKCS#11 URIs (RFC 7512): `pkcs11:token=CPS%20Card;object=Signature;id=%01?module-path=/usr/lib/x.so`.

Config files name token keys with these URIs, as p11-kit, OpenSSL engines and GnuTLS do, so an
operator can copy a URI printed by `msgw certs tokens` or by `p11tool`. The parser is strict:
an unknown (non vendor `x-`) attribute or a repeated one is an error, because a typo such as
`tokn=` would otherwise silently match every token. A PIN inside the URI (`pin-value`) is
refused: secrets come from files or environment variables named in the config, never from
the config text itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from urllib.parse import quote, unquote, unquote_to_bytes

from gateway.smime.pkcs11.errors import UriError

SCHEME = "pkcs11:"

#: path attribute name -> dataclass field (RFC 7512 section 2.3).
_PATH_ATTRS = {
    "token": "token",
    "manufacturer": "manufacturer",
    "serial": "serial",
    "model": "model",
    "library-manufacturer": "library_manufacturer",
    "library-description": "library_description",
    "library-version": "library_version",
    "object": "object",
    "type": "type",
    "id": "id",
    "slot-description": "slot_description",
    "slot-manufacturer": "slot_manufacturer",
    "slot-id": "slot_id",
}
_QUERY_ATTRS = {"pin-source": "pin_source", "module-name": "module_name", "module-path": "module_path"}
_OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")
# RFC 7512 pk11-pchar: unreserved, pct-encoded and these sub-delims; "&" is also allowed in the path.
_PATH_SAFE = ":[]@!$'()*+,=&"
_QUERY_SAFE = ":[]@!$'()*+,=/?|"


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI; `None` means "not specified, matches anything"."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: str | None = None
    object: str | None = None
    type: str | None = None
    id: bytes | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None
    pin_source: str | None = None
    module_name: str | None = None
    module_path: str | None = None

    @property
    def token_selector(self) -> TokenSelector:
        """The part of the URI that picks a slot and token (what one login covers)."""
        return TokenSelector(self.token, self.manufacturer, self.serial, self.model,
                             self.slot_description, self.slot_manufacturer, self.slot_id)

    def with_key(self, *, object: str | None = None, id: bytes | None = None,  # noqa: A002
                 type: str | None = None) -> Pkcs11Uri:  # noqa: A002
        return replace(self, object=object, id=id, type=type)

    def __str__(self) -> str:
        return format_uri(self)


@dataclass(frozen=True)
class TokenSelector:
    """Which token a URI designates; hashable, used to share one session per token."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None

    def describe(self) -> str:
        """Short human text for error messages (labels and serials are not secret)."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        parts = [f"{name}={value}" for name, value in values if value is not None]
        return ", ".join(parts) or "any token"


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; raise UriError naming the problem (never echoing a PIN)."""
    if not text.lower().startswith(SCHEME):
        raise UriError("not a PKCS#11 URI (must start with 'pkcs11:')")
    body = text[len(SCHEME):].strip()
    path, _, query = body.partition("?")
    values: dict[str, object] = {}
    for part in filter(None, path.split(";")):
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not sep:
            raise UriError(f"PKCS#11 URI path attribute {name!r} has no '='")
        if name in values:
            raise UriError(f"PKCS#11 URI attribute {name!r} appears twice")
        if name in _PATH_ATTRS:
            values[name] = _decode_path_value(name, raw)
        elif name.startswith("x-"):
            continue  # vendor extension: allowed, ignored
        else:
            raise UriError(f"unknown PKCS#11 URI path attribute {name!r}")
    for part in filter(None, query.split("&")):
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if name == "pin-value":
            raise UriError("a PIN inside a PKCS#11 URI is refused: use pin_file or pin_env in the config")
        if not sep:
            raise UriError(f"PKCS#11 URI query attribute {name!r} has no '='")
        if name in _QUERY_ATTRS:
            if name in values:
                raise UriError(f"PKCS#11 URI attribute {name!r} appears twice")
            values[name] = unquote(raw, errors="strict")
        elif not name.startswith("x-"):
            raise UriError(f"unknown PKCS#11 URI query attribute {name!r}")
    kwargs = {(_PATH_ATTRS.get(k) or _QUERY_ATTRS[k]): v for k, v in values.items()}
    return Pkcs11Uri(**kwargs)  # type: ignore[arg-type]


def _decode_path_value(name: str, raw: str) -> object:
    try:
        if name == "id":
            return unquote_to_bytes(raw)
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise UriError(f"PKCS#11 URI attribute {name!r} is not valid UTF-8") from exc
    if name == "type":
        value = value.lower()
        if value not in _OBJECT_TYPES:
            raise UriError(f"PKCS#11 URI type must be one of {', '.join(_OBJECT_TYPES)}")
    if name == "slot-id":
        if not value.isdigit():
            raise UriError("PKCS#11 URI slot-id must be a decimal number")
        return int(value)
    return value


def format_uri(uri: Pkcs11Uri) -> str:
    """Render a URI in RFC 7512 form (id fully percent-encoded, as p11tool prints it)."""
    path: list[str] = []
    for attr, field in _PATH_ATTRS.items():
        value = getattr(uri, field)
        if value is None:
            continue
        if isinstance(value, bytes):
            path.append(f"{attr}=" + "".join(f"%{b:02x}" for b in value))
        else:
            path.append(f"{attr}={quote(str(value), safe=_PATH_SAFE.replace(';', ''))}")
    query = [f"{attr}={quote(getattr(uri, field), safe=_QUERY_SAFE)}"
             for attr, field in _QUERY_ATTRS.items() if getattr(uri, field) is not None]
    return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")
