"""Readers of the public Annuaire Santé extractions and of our own CSV, and the import driver.

Why streaming and by header name: the real files have millions of rows and their columns move
between releases (columns are added, trailing `|` appears or not). Each reader maps the header
names it knows (accent-, case- and apostrophe-insensitive) to positions once, then turns each
line into a `DirectoryItem` or a `RowError` (line number + column name + rule, never a value).

Formats:
- `mssante-extraction`: `Extraction_Correspondance_MSSante…` — one row per mailbox. Addresses
  get capability `trusted-domain` (they are inside the MSSanté trust space); the directory
  turns that into `smime` when it knows an encryption certificate for the address.
- `rpps-extraction`: `PS_LibreAcces_Personne_activite…` (and the ProSanteConnect variant, which
  has the same identity columns) — one row per (person, activity); no addresses.
- `csv`: our own, comma- or semicolon-separated, UTF-8, one header line. Columns (by name, any
  order, only `address` and `capability` required):
  `address, capability, mailbox_type (PER|ORG|APP), key_ref, certificates (base64 DER, several
  separated by spaces), rpps, adeli, national_id, kind (person|organisation), civility,
  last_name, first_name, organisation, finess, siret, profession_code, profession_label,
  speciality_code, speciality_label, postcode, city`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import csv
import io
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.directory.directory import (
    MAILBOX_TYPES,
    TRUSTED_DOMAIN,
    Activity,
    AddressInput,
    DirectoryItem,
    DirectoryStore,
    Identity,
    ImportCounts,
    ImportFormatError,
    InvalidRecord,
    check_item,
    entity_key_for,
    is_address,
    is_adeli,
    is_finess,
    is_rpps,
    is_siret,
    national_id_for,
    normalise_address,
    split_national_id,
    validate_source,
)

FORMATS = ("mssante-extraction", "rpps-extraction", "csv")
_SAMPLE = 1 << 20
_MAX_KEPT_ERRORS = 1000
_OTHER_NATIONAL = re.compile(r"^[0-9A-Za-z][0-9A-Za-z/._-]{2,63}$")


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportReport:
    format: str
    source: str
    counts: ImportCounts
    rows: int = 0
    seconds: float = 0.0
    encoding: str = "utf-8"
    errors: list[RowError] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float(self.rows)

    def summary(self) -> str:
        c = self.counts
        return (f"{self.format}: added {c.added}, updated {c.updated}, removed {c.removed}, unchanged {c.unchanged}, "
                f"rejected {c.rejected}, duplicates {c.duplicates} ({self.rows} rows in {self.seconds:.2f} s, "
                f"{self.rows_per_second:.0f} rows/s)" + ("" if c.swept else "; nothing removed: no valid row"))


# -- header names ----------------------------------------------------------------------------

def norm_header(name: str) -> str:
    """Header names compare without accents, case, apostrophe style or extra spaces."""
    decomposed = unicodedata.normalize("NFKD", name.replace("’", "'"))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.casefold().split())


class _Columns:
    """Positions of the known header names; `get` tolerates rows shorter than the header."""

    def __init__(self, header: list[str]) -> None:
        self.index: dict[str, int] = {}
        for i, name in enumerate(header):
            self.index.setdefault(norm_header(name), i)

    def has(self, *names: str) -> bool:
        return all(norm_header(n) in self.index for n in names)

    def getter(self, name: str) -> Callable[[list[str]], str | None]:
        pos = self.index.get(norm_header(name))
        if pos is None:
            return lambda row: None

        def get(row: list[str]) -> str | None:
            if pos >= len(row):
                return None
            value = row[pos].strip()
            return value or None
        return get


# -- lines and encodings ---------------------------------------------------------------------

def detect_encoding(path: Path) -> str:
    """UTF-8 if the first MiB decodes as UTF-8 (BOM allowed), else ISO-8859-1 (older extractions)."""
    with open(path, "rb") as fh:
        sample = fh.read(_SAMPLE)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return "iso-8859-1"
    return "utf-8"


def iter_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text) without the line end; a stray non-UTF-8 line falls back to ISO-8859-1."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            raw = raw.rstrip(b"\r\n")
            if encoding == "utf-8":
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("iso-8859-1")
            else:
                text = raw.decode(encoding)
            yield number, text


def detect_format(header: str) -> str:
    """Which reader fits a header line; ImportFormatError if none does."""
    pipe = _Columns(header.split("|"))
    if pipe.has("Adresse BAL", "Type de BAL"):
        return "mssante-extraction"
    if pipe.has("Identification nationale PP", "Nom d'exercice") or pipe.has("Identifiant PP", "Code profession"):
        return "rpps-extraction"
    delim = ";" if header.count(";") > header.count(",") else ","
    cols = _Columns(next(csv.reader([header], delimiter=delim)))
    if cols.has("address", "capability"):
        return "csv"
    raise ImportFormatError("unknown file format: the header names no known columns", "line 1")


# -- shared field rules ----------------------------------------------------------------------

def _person(id_type: str | None, pp_id: str | None, national: str | None,
            cols: tuple[str, str, str]) -> tuple[str | None, str | None, str | None]:
    """(national_id, rpps, adeli) from the three identifier columns, or InvalidRecord naming a column."""
    type_col, id_col, nat_col = cols
    if national is None and pp_id is None:
        return None, None, None
    if national is None:
        if id_type is not None and id_type not in ("8", "0") and pp_id is not None:
            national = id_type + pp_id  # e.g. 3 + structure + internal id (staff of an establishment)
        elif id_type == "8" or (id_type is None and pp_id is not None and is_rpps(pp_id)):
            national = "8" + (pp_id or "")
        elif id_type == "0" or (id_type is None and pp_id is not None and is_adeli(pp_id)):
            national = "0" + (pp_id or "")
        else:
            raise InvalidRecord(f"column '{type_col}' is not 8 (RPPS) or 0 (ADELI)")
    rpps, adeli = split_national_id(national)
    if rpps is None and adeli is None:
        if national[:1] in ("8", "0"):
            raise InvalidRecord(f"column '{nat_col}' is not 8 + 11 digits (RPPS) or 0 + 9 characters (ADELI)")
        if not _OTHER_NATIONAL.match(national):
            raise InvalidRecord(f"column '{nat_col}' is not an identifiant national PP")
        return national, None, None  # e.g. 3 + structure + internal id: kept as is
    if pp_id is not None and pp_id != (rpps or adeli):
        raise InvalidRecord(f"column '{id_col}' does not match column '{nat_col}'")
    return national, rpps, adeli


def _yes_no(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().upper()
    if v in ("O", "OUI", "Y", "YES", "1", "TRUE", "VRAI"):
        return True
    if v in ("N", "NON", "NO", "0", "FALSE", "FAUX"):
        return False
    return None


def _structure(struct_type: str | None, struct_id: str | None) -> tuple[str | None, str | None]:
    """(finess, siret) from a structure identifier and its type (codes or names)."""
    if struct_id is None:
        return None, None
    t = (struct_type or "").upper()
    if t in ("1", "FINESS") or (not t and is_finess(struct_id)):
        return (struct_id if is_finess(struct_id) else None), None
    if t in ("3", "SIRET") or (not t and is_siret(struct_id)):
        return None, (struct_id if is_siret(struct_id) else None)
    return None, None


# -- MSSanté mailbox extraction ---------------------------------------------------------------

def read_mssante(lines: Iterator[tuple[int, str]]) -> Iterator[DirectoryItem | RowError]:
    _, header = next(lines)
    cols = _Columns(header.split("|"))
    if not cols.has("Adresse BAL"):
        raise ImportFormatError("column 'Adresse BAL' missing from the header", "line 1")
    g = {name: cols.getter(name) for name in (
        "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
        "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
        "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
        "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
        "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L6LIGNEACHEMINEMENT structure BAL",
        "Code postal structure BAL", "Département structure BAL")}
    for line, text in lines:
        if not text.strip():
            continue
        row = text.split("|")
        try:
            address = g["Adresse BAL"](row)
            if address is None:
                raise InvalidRecord("column 'Adresse BAL' is empty")
            if not is_address(address):
                raise InvalidRecord("column 'Adresse BAL' is not a mail address")
            box_type = (g["Type de BAL"](row) or "").upper() or None
            if box_type is not None and box_type not in MAILBOX_TYPES:
                raise InvalidRecord("column 'Type de BAL' is not PER, ORG or APP")
            national, rpps, adeli = _person(g["Type Identifiant PP"](row), g["Identifiant PP"](row),
                                            g["Identification nationale PP"](row),
                                            ("Type Identifiant PP", "Identifiant PP", "Identification nationale PP"))
            struct_type, struct_id = g["Type identifiant structure"](row), g["Identification Structure"](row)
            finess, siret = _structure(struct_type, struct_id)
            org = g["Raison Sociale structure BAL"](row) or g["Enseigne commerciale structure BAL"](row)
            is_person = national is not None and box_type in (None, "PER")
            activity = Activity(
                source="mssante-extraction", profession_code=g["Code Profession"](row),
                profession_label=g["Libellé Profession"](row), category_code=g["Catégorie profession"](row),
                category_label=g["Libellé de catégorie profession"](row),
                speciality_code=g["Code savoir-faire"](row), speciality_label=g["Libellé savoir-faire"](row),
                structure_type=struct_type, structure_id=struct_id, finess=finess, siret=siret, organisation=org,
                service=g["Service de rattachement"](row), postcode=g["Code postal structure BAL"](row),
                city=g["L6LIGNEACHEMINEMENT structure BAL"](row), department=g["Département structure BAL"](row))
            identity = Identity(
                kind="person" if is_person else "organisation", national_id=national if is_person else None,
                rpps=rpps if is_person else None, adeli=adeli if is_person else None,
                civility=g["Civilité d'exercice"](row) if is_person else None,
                last_name=g["Nom d'exercice"](row) if is_person else None,
                first_name=g["Prénom d'exercice"](row) if is_person else None,
                organisation=None if is_person else org, dematerialisation=_yes_no(g["Dématérialisation"](row)))
            addr = normalise_address(address)
            item = DirectoryItem(rkey="bal:" + addr, entity_key=entity_key_for(identity, activity, addr),
                                 identity=identity, activity=activity,
                                 address=AddressInput(address=addr, capability=TRUSTED_DOMAIN, mailbox_type=box_type))
            check_item(item)
            yield item
        except InvalidRecord as exc:
            yield RowError(line, str(exc))


# -- RPPS extraction -----------------------------------------------------------------------------

def read_rpps(lines: Iterator[tuple[int, str]]) -> Iterator[DirectoryItem | RowError]:
    _, header = next(lines)
    cols = _Columns(header.split("|"))
    if not (cols.has("Identification nationale PP") or cols.has("Identifiant PP")):
        raise ImportFormatError("column 'Identification nationale PP' missing from the header", "line 1")
    g = {name: cols.getter(name) for name in (
        "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Code civilité d'exercice",
        "Libellé civilité exercice", "Nom d'exercice", "Prénom d'exercice", "Code profession", "Libellé profession",
        "Code catégorie professionnelle", "Libellé catégorie professionnelle", "Code savoir-faire",
        "Libellé savoir-faire", "Code mode exercice", "Numéro SIRET site", "Numéro FINESS site",
        "Numéro FINESS établissement juridique", "Identifiant technique de la structure", "Raison sociale site",
        "Enseigne commerciale site", "Code postal (coord. structure)", "Libellé commune (coord. structure)",
        "Code département (coord. structure)")}
    for line, text in lines:
        if not text.strip():
            continue
        row = text.split("|")
        try:
            national, rpps, adeli = _person(g["Type d'identifiant PP"](row), g["Identifiant PP"](row),
                                            g["Identification nationale PP"](row),
                                            ("Type d'identifiant PP", "Identifiant PP", "Identification nationale PP"))
            if national is None:
                raise InvalidRecord("columns 'Identifiant PP' and 'Identification nationale PP' are empty")
            if rpps is None and adeli is None:
                raise InvalidRecord("column 'Identification nationale PP' is not an RPPS or ADELI identifier")
            siret, finess = g["Numéro SIRET site"](row), g["Numéro FINESS site"](row)
            if siret is not None and not is_siret(siret):
                raise InvalidRecord("column 'Numéro SIRET site' is not 14 digits")
            if finess is not None and not is_finess(finess):
                raise InvalidRecord("column 'Numéro FINESS site' is not a FINESS number")
            tech = g["Identifiant technique de la structure"](row)
            activity = Activity(
                source="rpps-extraction", profession_code=g["Code profession"](row),
                profession_label=g["Libellé profession"](row), category_code=g["Code catégorie professionnelle"](row),
                category_label=g["Libellé catégorie professionnelle"](row),
                speciality_code=g["Code savoir-faire"](row), speciality_label=g["Libellé savoir-faire"](row),
                mode_code=g["Code mode exercice"](row), structure_type="tech" if tech else None, structure_id=tech,
                finess=finess, siret=siret, organisation=g["Raison sociale site"](row)
                or g["Enseigne commerciale site"](row), postcode=g["Code postal (coord. structure)"](row),
                city=g["Libellé commune (coord. structure)"](row),
                department=g["Code département (coord. structure)"](row))
            identity = Identity(kind="person", national_id=national, rpps=rpps, adeli=adeli,
                                civility=g["Code civilité d'exercice"](row) or g["Libellé civilité exercice"](row),
                                last_name=g["Nom d'exercice"](row), first_name=g["Prénom d'exercice"](row))
            rkey = "|".join(["act", national, tech or siret or finess or "", activity.profession_code or "",
                             activity.speciality_code or "", activity.mode_code or ""])
            yield DirectoryItem(rkey=rkey, entity_key="pp:" + national, identity=identity, activity=activity)
        except InvalidRecord as exc:
            yield RowError(line, str(exc))


# -- our CSV -----------------------------------------------------------------------------------

def read_csv(lines: Iterator[tuple[int, str]]) -> Iterator[DirectoryItem | RowError]:
    _, header = next(lines)
    delim = ";" if header.count(";") > header.count(",") else ","
    cols = _Columns(next(csv.reader([header], delimiter=delim)))
    if not cols.has("address", "capability"):
        raise ImportFormatError("columns 'address' and 'capability' are required in the header", "line 1")
    g = {name: cols.getter(name) for name in (
        "address", "capability", "mailbox_type", "key_ref", "certificates", "rpps", "adeli", "national_id", "kind",
        "civility", "last_name", "first_name", "organisation", "finess", "siret", "profession_code",
        "profession_label", "speciality_code", "speciality_label", "postcode", "city")}
    for line, text in lines:
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            row = next(csv.reader(io.StringIO(text), delimiter=delim))
        except csv.Error:
            yield RowError(line, "not a valid CSV line")
            continue
        try:
            address, capability = g["address"](row), g["capability"](row)
            if address is None or not is_address(address):
                raise InvalidRecord("column 'address' is not a mail address")
            if capability is None:
                raise InvalidRecord("column 'capability' is empty")
            rpps, adeli, national = g["rpps"](row), g["adeli"](row), g["national_id"](row)
            if rpps is not None and not is_rpps(rpps):
                raise InvalidRecord("column 'rpps' is not 11 digits")
            if adeli is not None and not is_adeli(adeli):
                raise InvalidRecord("column 'adeli' is not 9 characters")
            national = national or national_id_for(rpps, adeli)
            if national is not None and rpps is None and adeli is None:
                rpps, adeli = split_national_id(national)
            certs = []
            for part in (g["certificates"](row) or "").split():
                try:
                    certs.append(base64.b64decode(part, validate=True))
                except (binascii.Error, ValueError):
                    raise InvalidRecord("column 'certificates' is not base64 DER") from None
            finess, siret = g["finess"](row), g["siret"](row)
            if finess is not None and not is_finess(finess):
                raise InvalidRecord("column 'finess' is not a FINESS number")
            if siret is not None and not is_siret(siret):
                raise InvalidRecord("column 'siret' is not 14 digits")
            box_type = (g["mailbox_type"](row) or "").upper() or None
            kind = (g["kind"](row) or ("organisation" if box_type in ("ORG", "APP") and national is None
                                         else "person")).lower()
            if kind not in ("person", "organisation"):
                raise InvalidRecord("column 'kind' is not person or organisation")
            activity = Activity(
                source="csv", profession_code=g["profession_code"](row), profession_label=g["profession_label"](row),
                speciality_code=g["speciality_code"](row), speciality_label=g["speciality_label"](row),
                structure_id=finess or siret, structure_type="FINESS" if finess else ("SIRET" if siret else None),
                finess=finess, siret=siret, organisation=g["organisation"](row), postcode=g["postcode"](row),
                city=g["city"](row))
            identity = Identity(kind=kind,  # type: ignore[arg-type]
                                national_id=national, rpps=rpps, adeli=adeli, civility=g["civility"](row),
                                last_name=g["last_name"](row), first_name=g["first_name"](row),
                                organisation=g["organisation"](row) if kind == "organisation" else None)
            addr = normalise_address(address)
            item = DirectoryItem(rkey="addr:" + addr, entity_key=entity_key_for(identity, activity, addr),
                                 identity=identity, activity=activity,
                                 address=AddressInput(address=addr, capability=capability, mailbox_type=box_type,
                                                      key_ref=g["key_ref"](row), certificates=tuple(certs)))
            check_item(item)
            yield item
        except InvalidRecord as exc:
            yield RowError(line, str(exc))


READERS: dict[str, Callable[[Iterator[tuple[int, str]]], Iterator[DirectoryItem | RowError]]] = {
    "mssante-extraction": read_mssante, "rpps-extraction": read_rpps, "csv": read_csv}


# -- driver ----------------------------------------------------------------------------------------

def import_file(store: DirectoryStore, path: str | Path, fmt: str | None = None, *, source: str | None = None,
                batch_size: int = 5000, allow_empty: bool = False,
                on_error: Callable[[RowError], None] | None = None) -> ImportReport:
    """Stream one file into the directory under its source (the format name, or `csv:<name>`).

    Malformed rows are counted and reported (first 1000 kept in the report, all passed to
    `on_error`) and do not stop the import."""
    p = Path(path)
    if not p.is_file():
        raise ImportFormatError("import file not found or not a regular file")
    encoding = detect_encoding(p)
    lines = iter_lines(p, encoding)
    first = next(lines, None)
    if first is None:
        raise ImportFormatError("import file is empty")
    if fmt is None:
        fmt = detect_format(first[1])
    if fmt not in READERS:
        raise ImportFormatError(f"unknown format (use {', '.join(FORMATS)})")
    source = validate_source(source or fmt)
    if source.split(":", 1)[0] != fmt:
        raise ImportFormatError("the source name must start with the format name (e.g. csv:lab)")
    report = ImportReport(format=fmt, source=source, counts=ImportCounts(), encoding=encoding)

    def chained() -> Iterator[tuple[int, str]]:
        yield first
        yield from lines

    def items() -> Iterable[DirectoryItem]:
        for out in READERS[fmt](chained()):
            report.rows += 1
            if isinstance(out, RowError):
                report.counts.rejected += 1
                if len(report.errors) < _MAX_KEPT_ERRORS:
                    report.errors.append(out)
                if on_error is not None:
                    on_error(out)
            else:
                yield out

    started = time.perf_counter()
    counts = store.sync_source(source, items(), batch_size=batch_size, allow_empty=allow_empty)
    report.seconds = time.perf_counter() - started
    counts.rejected = report.counts.rejected
    report.counts = counts
    return report
