"""JSON sidecars: what a lab or hospital system writes next to a PDF so that it can be routed.

A PDF says nothing machine-readable about its recipients. Systems that only produce PDFs (many
small LIS, scanning stations, imaging report servers) write a small JSON file beside it; the
gateway reads both and routes the PDF as it routes an HPRIM or HL7 result. There is no national
format for this, so the gateway defines one (version 1), deliberately small and strict::

    {
      "sidecar": 1,
      "recipients": [{"rpps": "10001234567"}, {"adeli": "751234567"}, {"idnat": "810001234567"},
                     {"address": "dr.exemple@medecin.mssante.fr"}, {"lab_code": "D042"}],
      "document_id": "LAB-2026-000123",
      "document_type": {"code": "11502-2", "system": "LOINC", "label": "CR d'examens biologiques"},
      "title": "Compte rendu d'examens biologiques",
      "created": "2026-11-25T09:30:00+01:00",
      "author": {"rpps": "10009999999", "name": "Laboratoire Exemple"},
      "replaces": "LAB-2026-000122",
      "cancels": false
    }

Only ``recipients`` is required. A recipient object carries exactly one identifier among
``rpps``, ``adeli``, ``idnat``, ``lab_code``, ``address``, plus an optional ``name`` and
``address`` (used when the directory does not know the identifier). Why strict: an unknown key is
almost always a typo (``recipient``, ``rpps_id``) and, accepted silently, would send a result to
the unrouted mailbox instead of the doctor; the error names the key's JSON path.
Why no patient fields: routing does not need them, and what is not written cannot leak. The
patient's identity stays inside the PDF.

Pure: bytes in, :class:`~gateway.routing.model.PayloadInfo` out; errors are
:class:`SidecarError` with a JSON path and never echo values.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from typing import Any

from gateway.routing.model import DocumentType, IdType, PartyRef, PayloadError, PayloadInfo, professional_id_type

MAX_SIDECAR_BYTES = 64 * 1024
SIDECAR_VERSION = 1

_TOP_KEYS = {"sidecar", "recipients", "document_id", "document_type", "title", "created", "author", "replaces",
             "cancels"}
_ID_KEYS = ("rpps", "adeli", "idnat", "lab_code", "address")
_PARTY_KEYS = {*_ID_KEYS, "name"}
_TYPE_KEYS = {"code", "system", "label"}
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_ISO_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?"
                       r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?")
_KEY = re.compile(r"[a-z_][a-z0-9_]{0,40}")  # our keys' style: only such keys are echoed in errors
_MAX_RECIPIENTS = 50
_MAX_TEXT = 256


class SidecarError(PayloadError):
    """A sidecar that cannot be used; ``where`` is a JSON path such as ``$.recipients[1].rpps``."""

    code = "payload-sidecar"


def looks_like_sidecar(data: bytes, filename: str | None = None) -> bool:
    """True for a ``.json`` file name, or content that opens a JSON object naming ``"recipients"``."""
    if filename and filename.lower().endswith(".json"):
        return True
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"{") and b'"recipients"' in data[:MAX_SIDECAR_BYTES]


def _key_name(key: str) -> str:
    """A key as errors show it: only identifier-like keys are echoed (input never reaches logs)."""
    return repr(key) if _KEY.fullmatch(key) else "(not shown)"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SidecarError(f"key {_key_name(key)} appears twice", "$")
        out[key] = value
    return out


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise SidecarError(f"{key!r} is required", where)
        return ""
    if not isinstance(value, str) or not value.strip():
        raise SidecarError(f"{key!r} must be a non-empty string", f"{where}.{key}")
    if len(value) > _MAX_TEXT or any(unicodedata.category(c) in _BAD_CATEGORIES for c in value):
        # control/format characters, line separators, lone surrogates (which no UTF-8 header takes)
        raise SidecarError(f"{key!r} is too long or contains control characters", f"{where}.{key}")
    return value.strip()


def _unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        shown = _key_name(extra[0])
        raise SidecarError(f"unknown key {shown} (allowed: {', '.join(sorted(allowed))})",
                           f"{where}.{extra[0]}" if _KEY.fullmatch(extra[0]) else where)


def _party(obj: Any, where: str, role: str) -> PartyRef:
    if not isinstance(obj, dict):
        raise SidecarError("a person must be a JSON object", where)
    _unknown(obj, _PARTY_KEYS, where)
    ids = [k for k in _ID_KEYS if k in obj and k != "address"]
    if len(ids) > 1:
        raise SidecarError(f"one identifier per person, found {', '.join(ids)}", where)
    name = _text(obj, "name", where)
    address = _text(obj, "address", where) or None
    if address is not None and not _ADDRESS.match(address):
        raise SidecarError("'address' is not a mail address", f"{where}.address")
    if not ids:
        if address is None and role == "author" and name:
            return PartyRef("NAME", name, organisation=name, role=role, source="sidecar")
        if address is None:
            raise SidecarError(f"a person needs one of {', '.join(_ID_KEYS)}", where)
        return PartyRef("ADDRESS", address, organisation=name, address=address, role=role, source="sidecar")
    key = ids[0]
    value = _text(obj, key, where, required=True).replace(" ", "")
    id_type: IdType
    if key == "rpps":
        if not re.fullmatch(r"[0-9]{11}", value):
            raise SidecarError("'rpps' must be 11 digits", f"{where}.rpps")
        id_type = "RPPS"
    elif key == "adeli":
        if not re.fullmatch(r"[0-9]{9}", value):
            raise SidecarError("'adeli' must be 9 digits", f"{where}.adeli")
        id_type = "ADELI"
    elif key == "idnat":
        if not re.fullmatch(r"[0-9A-Za-z]{9,12}", value):
            raise SidecarError("'idnat' must be 9 to 12 letters or digits", f"{where}.idnat")
        id_type = professional_id_type(value, national=True)
    else:
        id_type = "LAB-CODE"
    return PartyRef(id_type, value, organisation=name, address=address, role=role, source="sidecar",
                    authority="sidecar")


def _compact_time(value: str) -> str | None:
    """ISO 8601 date or date-time → the HL7/CDA ``YYYYMMDD[HHMM[SS]]`` form the other readers give."""
    if not value:
        return None
    m = _ISO_TIME.fullmatch(value)
    try:
        if not m:
            raise ValueError
        year, month, day, hour, minute, second = (int(g or 0) for g in m.groups())
        dt.datetime(year, month, day, hour, minute, second)  # a real date and time (month 13 or 25 o'clock are refused)
    except ValueError:
        raise SidecarError("'created' must be an ISO 8601 date or date-time", "$.created") from None
    return "".join(g for g in m.groups() if g)


def read_sidecar(data: bytes) -> PayloadInfo:
    """Read a version-1 sidecar into the ``PayloadInfo`` of the PDF it describes (kind ``pdf``)."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar larger than {MAX_SIDECAR_BYTES} bytes", "byte 0")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SidecarError("sidecar is not UTF-8", f"byte {exc.start}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise SidecarError(f"not valid JSON ({exc.msg})", f"line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise SidecarError("JSON nested too deeply", "$") from None
    except ValueError:  # found in review: an integer of over 4300 digits (int_max_str_digits)
        raise SidecarError("not valid JSON (a number too long)", "$") from None
    if not isinstance(doc, dict):
        raise SidecarError("a sidecar is a JSON object", "$")
    _unknown(doc, _TOP_KEYS, "$")
    version = doc.get("sidecar", SIDECAR_VERSION)
    if version != SIDECAR_VERSION or isinstance(version, bool):
        raise SidecarError(f"unsupported sidecar version (this gateway reads version {SIDECAR_VERSION})",
                           "$.sidecar")
    recipients = doc.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise SidecarError("'recipients' must be a non-empty list", "$.recipients")
    if len(recipients) > _MAX_RECIPIENTS:
        raise SidecarError(f"more than {_MAX_RECIPIENTS} recipients", "$.recipients")
    parties = tuple(_party(r, f"$.recipients[{i}]", "recipient") for i, r in enumerate(recipients))
    author = _party(doc["author"], "$.author", "author") if doc.get("author") is not None else None

    doc_type = DocumentType("application/pdf", "Document PDF", "MIME")
    if doc.get("document_type") is not None:
        raw = doc["document_type"]
        if not isinstance(raw, dict):
            raise SidecarError("'document_type' must be an object", "$.document_type")
        _unknown(raw, _TYPE_KEYS, "$.document_type")
        doc_type = DocumentType(_text(raw, "code", "$.document_type", required=True),
                                _text(raw, "label", "$.document_type"), _text(raw, "system", "$.document_type"))
    cancels = doc.get("cancels", False)
    if not isinstance(cancels, bool):
        raise SidecarError("'cancels' must be true or false", "$.cancels")
    replaced = _text(doc, "replaces", "$") or None
    created = _compact_time(_text(doc, "created", "$"))
    return PayloadInfo(kind="pdf", document_type=doc_type, author=author, recipients=parties,
                       document_id=_text(doc, "document_id", "$") or None, replaces=replaced is not None,
                       replaced_id=replaced, cancels=cancels, created=created, title=_text(doc, "title", "$"),
                       media_type="application/pdf", encoding="utf-8")


__all__ = ["MAX_SIDECAR_BYTES", "SidecarError", "looks_like_sidecar", "read_sidecar"]
