"""Payload routing per second: HPRIM / HL7 v2 / CDA parse, route (directory look-up) and XDM build.

In-process and single-threaded, with invented payloads (fictitious people and identifiers) and a
fresh SqliteDirectory holding the recipients (plus filler rows so look-ups hit a real index). For each
payload, time-bounded loops measure:
- ``parse``: gateway.routing.payload.read_payload;
- ``intake``: gateway.intake.process.intake_bytes (parse + resolve in the directory + MIME message with
  the IHE XDM package when the payload is or embeds a CDA), duplicate store off (dedup=None);
- ``xdm``: gateway.routing.xdm.build_xdm alone (for payloads carrying a CDA);
and, in the same run, the baselines:
- ``email parse``: email.message_from_bytes (policy.default) of a plain message of the same size,
  and of the message the intake built (walked to the end, as the pipeline's classify step would);
- ``lxml parse``: lxml.etree.fromstring of the CDA alone.

Usage: .venv/bin/python bench/payload_routing.py [--quick] [--seconds 1] [--json FILE]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email
import email.policy
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import body_lines, default_json, loadavg, machine, print_table, write_json  # noqa: E402
from lxml import etree  # noqa: E402

from gateway.directory.directory import AddressInput, DirectoryItem, Identity, SqliteDirectory  # noqa: E402
from gateway.intake.process import intake_bytes  # noqa: E402
from gateway.intake.resolve import resolve_recipients  # noqa: E402
from gateway.intake.settings import RoutingSettings  # noqa: E402
from gateway.intake.wrap import payload_message  # noqa: E402
from gateway.routing.payload import read_payload  # noqa: E402
from gateway.routing.xdm import XdmDocument, build_xdm  # noqa: E402

# Invented identifiers (same shapes as the intake tests' samples; nobody real).
INS = "299129912345678"
INS_OID_TEST = "1.2.250.1.213.1.4.10"
RPPS_LOCAL, RPPS_SMIME, RPPS_LABCODE = "19900000011", "19900000033", "19900000044"
ADDR_TRUSTED, ADDR_SMIME, ADDR_LABCODE = ("alpha@imaginaire.mssante.test", "berthe@imaginaire.mssante.test",
                                          "zephyr@cabinet.test")
LIS, UNROUTED = "lis@labo-fictif.test", "tri@labo-fictif.test"
NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


def hprim_medecin(results: int = 1) -> bytes:
    lines = ["D0001", "PATIENTFICTIF", "Clémence", "1 rue Nulle Part", "", "99999 NULLEVILLE", "01/01/1999",
             "2991299123456 78", "REQ42", "15/01/2025", "LABX       Laboratoire Fictif", "DRZEP      DR Test",
             "Résultats d'examens biologiques", "Glycémie à jeun : 5.2 mmol/l", "****LAB****"]
    lines += [f"RES|Analyse {i}|A{i:03d}|N|5.2|mmol/l|4.1|5.9|N|F" for i in range(results)]
    lines += ["TEX|Contrôle dans trois mois.", "****FIN****", "****FINFICHIER****"]
    return "\r\n".join(lines).encode("iso-8859-1") + b"\r\n"


def cda(sections: int = 1) -> bytes:
    body = "".join(f"<component><section><title>Résultats {i}</title><text>Glycémie 5.2 mmol/l, valeur de "
                   f"référence 4.1-5.9, résultat normal, contrôle {i}</text></section></component>"
                   for i in range(sections))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <id root="1.2.250.9999.1.1" extension="DOC1"/>
  <code code="11502-2" codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC" displayName="CR d'examens"/>
  <title>CR d'examens biologiques</title>
  <effectiveTime value="20250115100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.1" extension="SET1"/>
  <versionNumber value="1"/>
  <recordTarget><patientRole>
    <id root="{INS_OID_TEST}" extension="{INS}"/>
    <patient><name><family>PATIENTFICTIF</family><given>Clémence</given></name></patient>
  </patientRole></recordTarget>
  <author><time value="20250115100000+0100"/><assignedAuthor>
    <id root="1.2.250.1.71.4.2.1" extension="819900000099"/>
    <assignedPerson><name><family>AUTEURFICTIF</family></name></assignedPerson>
    <representedOrganization><name>Laboratoire Fictif</name></representedOrganization>
  </assignedAuthor></author>
  <informationRecipient><intendedRecipient><id root="1.2.250.1.71.4.2.1" extension="8{RPPS_SMIME}"/>
  </intendedRecipient></informationRecipient>
  <component><structuredBody>{body}</structuredBody></component>
</ClinicalDocument>
""".encode()


def oru(embedded: bytes | None = None) -> bytes:
    ordering = "8" + RPPS_LOCAL
    segs = [
        "MSH|^~\\&|LISX|LABX|GWX|ORGX|20250115100000||ORU^R01^ORU_R01|CTRL0001|P|2.5|||||FRA|UNICODE UTF-8",
        f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&{INS_OID_TEST}&ISO^INS||PATIENTFICTIF^Clémence^^^^^L||19990101|F",
        f"ORC|NW|CMD1^CABX|REQ42^LABX|||||||||{ordering}^ALPHA^Test^^^DR^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        "OBR|1|CMD1^CABX|REQ42^LABX|11502-2^CR d'examens biologiques^LN|||20250115083000|||||||||"
        f"{ordering}^ALPHA^Test^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||||||||F",
        "OBX|1|NM|GLY^Glycémie^L||5.2|mmol/l|4.1-5.9|N|||F",
    ]
    if embedded is not None:
        segs.append(f"OBX|2|ED|11502-2^CR^LN||^TEXT^XML^Base64^{base64.b64encode(embedded).decode()}||||||F")
    return ("\r".join(segs) + "\r").encode("utf-8")


def _person(rpps: str, address: str | None, capability: str = "trusted-domain", n: int = 0) -> DirectoryItem:
    national = "8" + rpps
    ident = Identity(kind="person", national_id=national, rpps=rpps, last_name=f"FICTIF{n}")
    addr = AddressInput(address, capability, mailbox_type="PER") if address else None
    return DirectoryItem(rkey=f"{national}:{address or '-'}", entity_key=f"pp:{national}", identity=ident,
                         address=addr)


def make_directory(path: Path, filler: int) -> SqliteDirectory:
    d = SqliteDirectory(path)
    d.put(_person(RPPS_LOCAL, ADDR_TRUSTED))
    d.put(_person(RPPS_SMIME, ADDR_SMIME))
    d.put(_person(RPPS_LABCODE, ADDR_LABCODE))
    d.sync_source("csv:filler", (_person(f"1980{n:07d}", f"filler{n}@imaginaire.mssante.test", n=n)
                                 for n in range(filler)))
    return d


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    fn()  # warm up (imports, caches)
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed, count


def plain_message(size: int) -> bytes:
    return (b"From: <lis@labo-fictif.test>\r\nTo: <berthe@imaginaire.mssante.test>\r\nSubject: TEST\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body_lines(max(size, 10)))


def walk(raw: bytes) -> int:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return sum(1 for _ in msg.walk())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 1, quick 0.3)")
    ap.add_argument("--filler", type=int, default=None, help="extra directory rows (default 10000, quick 1000)")
    ap.add_argument("--json", default=default_json("payload_routing"))
    args = ap.parse_args(argv)
    seconds = args.seconds or (0.3 if args.quick else 1.0)
    filler = args.filler if args.filler is not None else (1000 if args.quick else 10000)
    work = Path(tempfile.mkdtemp(prefix="msgw-bench-payload-"))
    rows: list[dict] = []
    print(f"payload routing: {seconds}s per measurement, directory of {filler + 3} rows, "
          f"load average {loadavg():.2f}", flush=True)
    try:
        directory = make_directory(work / "directory.sqlite", filler)
        settings = RoutingSettings(unrouted={LIS: UNROUTED}, lab_codes={("labx", "DRZEP"): RPPS_LABCODE},
                                   xdm=True, xdm_source_id="1.2.250.9999.7")
        big_cda = cda(200)
        payloads = {
            "HPRIM (1 result)": (hprim_medecin(1), "resultat.hpr", None),
            "HPRIM (200 results)": (hprim_medecin(200), "resultat.hpr", None),
            "HL7 ORU^R01": (oru(), None, None),
            "HL7 ORU^R01 + CDA": (oru(cda(1)), None, cda(1)),
            "CDA (small)": (cda(1), "document.xml", cda(1)),
            "CDA (200 sections)": (big_cda, "document.xml", big_cda),
        }
        for name, (data, filename, cda_doc) in payloads.items():
            info = read_payload(data, filename)

            def intake(data: bytes = data, filename: str | None = filename) -> object:
                return intake_bytes(data, filename, sender=LIS, directory=directory, dedup=None, settings=settings,
                                    now=NOW)

            result = intake()
            out_message = result.outgoing[0].message
            routed = result.outgoing[0].recipients
            row: dict = {"payload": name, "bytes": len(data), "kind": info.kind, "routed_to": list(routed),
                         "out_bytes": len(out_message), "xdm_in_message": b"IHE_XDM.ZIP" in out_message}
            row["parse_s"], _ = rate(lambda d=data, f=filename: read_payload(d, f), seconds)
            row["intake_s"], _ = rate(intake, seconds)
            row["resolve_s"], _ = rate(lambda i=info: resolve_recipients(
                i, directory, sender=LIS, unrouted=UNROUTED, lab_codes=settings.lab_codes), seconds)
            intended = [p for p, _ in result.resolution.resolved]
            row["mime_s"], _ = rate(lambda d=data, i=info, f=filename, r=routed, p=intended: payload_message(
                d, i, sender=LIS, recipients=r, filename=f, now=NOW, xdm=True, xdm_source_id="1.2.250.9999.7",
                intended=p), seconds)
            if cda_doc is not None:
                doc_info = read_payload(cda_doc, "document.xml")
                row["xdm_s"], _ = rate(lambda c=cda_doc, i=doc_info: build_xdm(
                    [XdmDocument(c, i, "text/xml")], source_id="1.2.250.9999.7", now=NOW), seconds)
                row["lxml_cda_s"], _ = rate(lambda c=cda_doc: etree.fromstring(c), seconds)  # noqa: S320 - our own XML
            else:
                row["xdm_s"] = row["lxml_cda_s"] = None
            same = plain_message(len(data))
            row["email_same_size_s"], _ = rate(lambda m=same: walk(m), seconds)
            row["email_out_message_s"], _ = rate(lambda m=out_message: walk(m), seconds)
            rows.append(row)
            print(f"  {name}: intake {row['intake_s']:.0f}/s", flush=True)
        directory.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = print_table(
        ["payload", "bytes", "routed to", "intake/s (all steps)", "parse/s", "route/s", "MIME+XDM build/s",
         "XDM alone/s", "email parse same size/s", "email parse of output/s", "lxml CDA/s", "intake / email"],
        [[r["payload"], r["bytes"], ",".join(a.split("@")[0] for a in r["routed_to"]), r["intake_s"], r["parse_s"],
          r["resolve_s"], r["mime_s"], r["xdm_s"], r["email_same_size_s"], r["email_out_message_s"], r["lxml_cda_s"],
          f"{r['intake_s'] / r['email_same_size_s']:.3f}"] for r in rows], 0)
    write_json(args.json, {"benchmark": "payload_routing", "machine": machine(), "quick": args.quick,
                           "seconds": seconds, "directory_rows": filler + 3, "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
