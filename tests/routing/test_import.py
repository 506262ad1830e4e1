"""Import of the Annuaire Santé extractions and of our CSV: streaming, idempotent, per-row errors."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from gateway.directory.annuaire import (
    ImportFormatError,
    detect_encoding,
    detect_format,
    import_file,
    read_mssante,
)
from gateway.directory.directory import SMIME, TRUSTED_DOMAIN, SqliteDirectory
from tests.conftest import corpus_dir
from tests.routing.gen_extractions import (
    MSSANTE_HEADER,
    RPPS_HEADER,
    mssante_row,
    org_row,
    rpps_number,
    rpps_row,
    write_lines,
    write_mssante,
    write_rpps,
)


def test_headers_are_the_published_ones() -> None:
    assert len(MSSANTE_HEADER) == 31
    assert len(RPPS_HEADER) == 56
    assert all(len(rpps_number(i)) == 11 and rpps_number(i).isdigit() for i in range(50))
    assert len({rpps_number(i) for i in range(1000)}) == 1000


def test_detect_format() -> None:
    assert detect_format("|".join(MSSANTE_HEADER)) == "mssante-extraction"
    assert detect_format("|".join(RPPS_HEADER) + "|") == "rpps-extraction"
    assert detect_format("address,capability,rpps") == "csv"
    assert detect_format("address;capability") == "csv"
    with pytest.raises(ImportFormatError):
        detect_format("foo|bar|baz")


def test_mssante_import_and_lookups(store: SqliteDirectory, tmp_path: Path) -> None:
    f = write_lines(tmp_path / "Extraction_Correspondance_MSSante_202611250000.txt", MSSANTE_HEADER,
                    iter([mssante_row(1), mssante_row(2), org_row(7), org_row(8, box="APP")]))
    report = import_file(store, f)
    assert report.format == "mssante-extraction" and report.source == "mssante-extraction"
    c = report.counts
    assert (c.added, c.updated, c.removed, c.unchanged, c.rejected) == (4, 0, 0, 0, 0)
    person = store.by_rpps(rpps_number(1))
    assert person is not None and person.entity.kind == "person"
    assert person.entity.national_id == "8" + rpps_number(1)
    assert person.entity.dematerialisation is True
    assert person.addresses[0].address == "p1@mssante.test"
    assert person.addresses[0].capability == TRUSTED_DOMAIN
    act = person.entity.activities[0]
    assert act.profession_code == "10" and act.finess and act.postcode
    org = store.by_address("SERVICE7@ch-test.test")
    assert org is not None and org.entity.kind == "organisation"
    assert org.entity.organisation == "CENTRE HOSPITALIER TEST 7" and org.addresses[0].mailbox_type == "ORG"
    assert store.address("service8@ch-test.test").mailbox_type == "APP"


def test_reimport_is_idempotent_updates_and_removes(store: SqliteDirectory, tmp_path: Path) -> None:
    f = write_mssante(tmp_path / "m1.txt", 50)
    first = import_file(store, f).counts
    assert (first.added, first.updated, first.removed, first.unchanged) == (50, 0, 0, 0)
    again = import_file(store, f).counts
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 50)
    # next extraction: rows 0-9 gone, row 20 changed, rows 50-54 new
    rows = [mssante_row(i) for i in range(10, 55)]
    changed = rows[10]
    changed[MSSANTE_HEADER.index("Libellé Profession")] = "Médecin (libellé modifié)"
    f2 = write_lines(tmp_path / "m2.txt", MSSANTE_HEADER, iter(rows))
    c = import_file(store, f2, batch_size=7).counts  # small batches: counts must not depend on them
    assert (c.added, c.updated, c.removed, c.unchanged, c.rejected) == (5, 1, 10, 39, 0)
    assert store.by_rpps(rpps_number(3)) is None
    assert store.address("p3@mssante.test") is None
    assert store.by_rpps(rpps_number(20)).entity.activities[0].profession_label == "Médecin (libellé modifié)"
    assert store.address("p54@mssante.test") is not None
    c = import_file(store, f2).counts
    assert (c.added, c.updated, c.removed, c.unchanged) == (0, 0, 0, 45)


def test_sources_are_independent(store: SqliteDirectory, tmp_path: Path) -> None:
    import_file(store, write_mssante(tmp_path / "m.txt", 5))
    import_file(store, write_rpps(tmp_path / "r.txt", 5))
    c = store.by_rpps(rpps_number(2))
    assert set(c.entity.sources) == {"rpps-extraction", "mssante-extraction"}
    assert len(c.entity.activities) == 2 and c.addresses
    # an RPPS extraction without person 2 removes only the RPPS activity
    rows = [rpps_row(i) for i in range(5) if i != 2]
    report = import_file(store, write_lines(tmp_path / "r2.txt", RPPS_HEADER, iter(rows), trailing_pipe=True))
    assert report.counts.removed == 1
    c = store.by_rpps(rpps_number(2))
    assert c.entity.sources == ("mssante-extraction",) and c.addresses


def test_rpps_import_several_activities(store: SqliteDirectory, tmp_path: Path) -> None:
    rows = [rpps_row(1, activity=0), rpps_row(1, activity=1), rpps_row(2), rpps_row(2)]  # last one: duplicate
    f = write_lines(tmp_path / "PS_LibreAcces_Personne_activite.txt", RPPS_HEADER, iter(rows), trailing_pipe=True)
    report = import_file(store, f)
    c = report.counts
    assert (c.added, c.duplicates, c.rejected) == (3, 1, 0)
    person = store.by_rpps(rpps_number(1))
    assert person is not None and len(person.entity.activities) == 2 and person.addresses == ()
    assert person.entity.civility == "DR" and person.entity.first_name


def test_malformed_rows_reported_with_line_numbers(store: SqliteDirectory, tmp_path: Path) -> None:
    bad_address = mssante_row(1006)
    bad_address[1] = "not-an-address"
    bad_type = mssante_row(1001)
    bad_type[0] = "XYZ"
    no_address = mssante_row(1002)
    no_address[1] = ""
    bad_rpps = mssante_row(1003)
    bad_rpps[3], bad_rpps[4] = "12345", "812345"
    short = mssante_row(1004)[:2]  # missing trailing columns: tolerated
    extra = mssante_row(1005) + ["extra", "columns"]  # extra trailing columns: tolerated
    lines = ["|".join(r) for r in (bad_type, no_address, bad_rpps, short, extra, bad_address)]
    lines.append("garbage line without pipes")
    f = write_mssante(tmp_path / "m.txt", 20, extra_rows=lines)
    errors = []
    report = import_file(store, f, on_error=errors.append)
    c = report.counts
    assert (c.added, c.rejected) == (22, 5)
    assert [(e.line, e.reason) for e in report.errors] == [
        (22, "column 'Type de BAL' is not PER, ORG or APP"),
        (23, "column 'Adresse BAL' is empty"),
        (24, "column 'Identification nationale PP' is not 8 + 11 digits (RPPS) or 0 + 9 characters (ADELI)"),
        (27, "column 'Adresse BAL' is not a mail address"),
        (28, "column 'Adresse BAL' is empty"),
    ]
    assert errors == report.errors
    for e in report.errors:  # reasons name columns, never values
        assert "1001" not in e.reason and "812345" not in e.reason
    assert store.address("p1004@mssante.test") is not None
    assert store.address("p1005@mssante.test") is not None


def test_iso_8859_1_file_is_detected(store: SqliteDirectory, tmp_path: Path) -> None:
    f = write_mssante(tmp_path / "latin1.txt", 30, encoding="iso-8859-1")
    assert detect_encoding(f) == "iso-8859-1"
    report = import_file(store, f)
    assert report.encoding == "iso-8859-1" and report.counts.added == 30
    names = {store.by_rpps(rpps_number(i)).entity.last_name for i in range(30)}
    assert "ÉTIENNE" in names and "LEMAÎTRE" in names


def test_utf8_bom_and_crlf(store: SqliteDirectory, tmp_path: Path) -> None:
    f = tmp_path / "bom.txt"
    text = "\r\n".join("|".join(r) for r in (MSSANTE_HEADER, mssante_row(1), mssante_row(4))) + "\r\n"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    report = import_file(store, f)
    assert report.counts.added == 2 and report.counts.rejected == 0
    assert store.by_rpps(rpps_number(4)).entity.last_name == "ÉTIENNE"


def test_empty_extraction_does_not_wipe_the_source(store: SqliteDirectory, tmp_path: Path) -> None:
    import_file(store, write_mssante(tmp_path / "m.txt", 10))
    c = import_file(store, write_mssante(tmp_path / "empty.txt", 0)).counts
    assert c.removed == 0 and c.swept is False
    assert store.address("p3@mssante.test") is not None
    c = import_file(store, write_mssante(tmp_path / "empty.txt", 0), allow_empty=True).counts
    assert c.removed == 10 and store.address("p3@mssante.test") is None


def test_unknown_or_missing_file(store: SqliteDirectory, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("a|b|c\n1|2|3\n")
    with pytest.raises(ImportFormatError):
        import_file(store, tmp_path / "x.txt")
    with pytest.raises(ImportFormatError):
        import_file(store, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ImportFormatError):
        import_file(store, tmp_path / "empty.txt")


def test_csv_import(store: SqliteDirectory, tmp_path: Path, cert_pair) -> None:
    b64 = " ".join(base64.b64encode(c).decode() for c in cert_pair)
    f = tmp_path / "ours.csv"
    f.write_text(
        "address,capability,key_ref,certificates,rpps,last_name,first_name,organisation,mailbox_type,postcode\n"
        f"dr.smime@hopital.test,smime,,{b64},{rpps_number(5)},ROUSSEL,Inès,,PER,35000\n"
        "secretariat@msgw.test,local,keys.cabinet,,,,,CABINET TEST,ORG,29200\n"
        "# a comment line\n"
        "labo@labo.test,legacy:apicrypt1,,,,,,LABO TEST,APP,\n"
        "bad@hopital.test,smime,,,,,,,,\n"
        "bad2@hopital.test,clear,,,,,,,,\n", encoding="utf-8")
    report = import_file(store, f)
    assert report.format == "csv" and report.source == "csv"
    assert (report.counts.added, report.counts.rejected) == (3, 2)
    assert [e.line for e in report.errors] == [6, 7]
    smime = store.by_rpps(rpps_number(5))
    assert smime.addresses[0].capability == SMIME and set(smime.addresses[0].certificates) == set(cert_pair)
    assert store.address("secretariat@msgw.test").key_ref == "keys.cabinet"
    assert store.address("labo@labo.test").legacy_codec == "apicrypt1"
    report = import_file(store, f, source="csv:lab")
    assert report.counts.added == 3  # a second CSV source is independent
    with pytest.raises(ImportFormatError):
        import_file(store, f, source="mssante-extraction")


def test_reader_is_streaming(tmp_path: Path) -> None:
    f = write_mssante(tmp_path / "m.txt", 10)
    from gateway.directory.annuaire import iter_lines

    gen = read_mssante(iter_lines(f, "utf-8"))
    first = next(gen)
    assert first.rkey == "bal:p0@mssante.test"  # produced before the rest of the file is read


@pytest.mark.slow  # runs in CI (make test selects every test); about 10 s here
@pytest.mark.timeout(120)
def test_import_a_large_extraction(tmp_path: Path) -> None:
    """A national extraction's size, scaled for CI (20,000 rows; ``MSGW_RESILIENCE_SCALE=5`` is
    the 100,000 of before). How fast it goes is `bench/directory_import.py`'s job, not a test's."""
    n = 20_000 * max(1, int(os.environ.get("MSGW_RESILIENCE_SCALE", "1") or "1"))
    f = write_mssante(tmp_path / "Extraction_Correspondance_MSSante_big.txt", n,
                      extra_rows=["PER|broken-address|8|" + rpps_number(n + 1)])
    with SqliteDirectory(tmp_path / "big.sqlite") as big:
        report = import_file(big, f)
        print(f"\n{n} rows MSSanté import: {report.summary()}")
        assert report.counts.added == n and report.counts.rejected == 1
        assert report.errors[0].line == n + 2
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            c = big.by_rpps(rpps_number(i))
            assert c is not None and c.addresses[0].address == f"p{i}@mssante.test"
        assert big.by_address(f"p{n - 1}@MSSANTE.test") is not None
        print(f"{n // 1000} lookups by RPPS in {(time.perf_counter() - t0) * 1000:.1f} ms")
        again = import_file(big, f)
        print(f"re-import: {again.summary()}")
        assert again.counts.unchanged == n and again.counts.added == again.counts.removed == 0


def test_corpus_samples(store: SqliteDirectory) -> None:
    folder = corpus_dir() / "directory"
    files = sorted(folder.glob("*.txt"))
    assert files
    for f in files:
        # the two RPPS-shaped files are kept apart with a source suffix (else the second replaces the first)
        report = import_file(store, f, source=None if "ProSanteConnect" not in f.name else "rpps-extraction:psc")
        c = report.counts
        assert report.rows == c.added + c.updated + c.unchanged + c.duplicates + c.rejected
        if "HEADER" in f.name:
            assert report.rows == 0
        if f.name.startswith("PS_LibreAcces"):
            # its synthetic rows carry no RPPS/ADELI: every one is rejected, with its line number
            assert report.format == "rpps-extraction" and c.rejected == report.rows > 0
            assert [e.line for e in report.errors] == list(range(2, report.rows + 2))
        if "SYNTHETIC" in f.name:
            assert report.format == "rpps-extraction" and c.added == 1 and c.rejected == 0
    assert store.counts().get("rpps-extraction:psc") == 1


def test_concurrent_import_of_the_same_source_is_refused(tmp_path: Path) -> None:
    from gateway.directory.directory import DirectoryUnavailable

    f = write_mssante(tmp_path / "m.txt", 30)
    with SqliteDirectory(tmp_path / "d.sqlite") as one, SqliteDirectory(tmp_path / "d.sqlite") as two:
        from gateway.directory.annuaire import iter_lines

        def items():
            for n, item in enumerate(read_mssante(iter_lines(f, "utf-8"))):
                if n == 10:  # another process imports the same source meanwhile
                    import_file(two, f)
                yield item

        with pytest.raises(DirectoryUnavailable):
            one.sync_source("mssante-extraction", items(), batch_size=5)
        assert one.address("p29@mssante.test") is not None  # nothing was swept


def test_mssante_staff_identifier_of_an_establishment(store: SqliteDirectory, tmp_path: Path) -> None:
    row = mssante_row(3)
    row[2], row[3], row[4] = "3", "1290000017/ABC12", ""  # type 3: structure + internal id, no RPPS
    f = write_lines(tmp_path / "m.txt", MSSANTE_HEADER, iter([row]))
    report = import_file(store, f)
    assert report.counts.added == 1, report.errors
    c = store.by_national_id("31290000017/ABC12")
    assert c is not None and c.entity.rpps is None and c.addresses[0].address == "p3@mssante.test"
