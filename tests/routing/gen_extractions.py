"""Generators of invented Annuaire Santé extractions (no real person: names are drawn from a
small invented list, RPPS numbers are 11 digits with a Luhn key, domains end in `.test`).

Header names are exactly those of the public files (see french-health.md): the MSSanté mailbox
extraction (31 columns) and the RPPS `PS_LibreAcces_Personne_activite` extraction (56 columns,
trailing `|`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

MSSANTE_HEADER = [
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
    "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL", "L4NUMEROVOIE structure BAL", "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL", "L4LIBELLEVOIE structure BAL", "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL", "Code postal structure BAL", "Département structure BAL",
    "Pays structure BAL",
]

RPPS_HEADER = [
    "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Code civilité d'exercice",
    "Libellé civilité exercice", "Code civilité", "Libellé civilité", "Nom d'exercice", "Prénom d'exercice",
    "Code profession", "Libellé profession", "Code catégorie professionnelle", "Libellé catégorie professionnelle",
    "Code type savoir-faire", "Libellé type savoir-faire", "Code savoir-faire", "Libellé savoir-faire",
    "Code mode exercice", "Libellé mode exercice", "Numéro SIRET site", "Numéro SIREN site", "Numéro FINESS site",
    "Numéro FINESS établissement juridique", "Identifiant technique de la structure", "Raison sociale site",
    "Enseigne commerciale site", "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)", "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. Structure)", "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)", "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)", "Bureau cedex (coord. structure)", "Code postal (coord. structure)",
    "Code commune (coord. structure)", "Libellé commune (coord. structure)", "Code pays (coord. structure)",
    "Libellé pays (coord. structure)", "Téléphone (coord. structure)", "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)", "Adresse e-mail (coord. structure)", "Code département (coord. structure)",
    "Libellé département (coord. structure)", "Ancien identifiant de la structure", "Autorité d'enregistrement",
    "Code secteur d'activité", "Libellé secteur d'activité", "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens", "Code fonction", "Libellé fonction", "Code genre d'activité",
    "Libellé genre d'activité",
]

LAST = ["ARNOUX", "BELLEC", "CORDIER", "DUVAL-TEST", "ÉTIENNE", "FAURÉ", "GIRAUDEAU", "HOUDIN", "ISNARD", "JOLIBOIS",
        "KERVELLA", "LEMAÎTRE", "MARCHAND", "NOGUÈS", "OLLIVIER", "PÉRON", "QUÉMÉNER", "ROUSSEL", "SALAÜN", "TREGUER"]
FIRST = ["Anaïs", "Bastien", "Céline", "Damien", "Élodie", "François", "Gaëlle", "Hervé", "Inès", "Jérôme"]
PROFESSIONS = [("10", "Médecin", "SM54", "Médecine générale"), ("10", "Médecin", "SM04", "Cardiologie"),
               ("21", "Pharmacien", "", ""), ("60", "Infirmier", "", ""), ("40", "Chirurgien-Dentiste", "", "")]


def luhn_key(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return str((10 - total % 10) % 10)


def rpps_number(i: int) -> str:
    """An invented 11-digit RPPS (10 + 8 digits + Luhn key), distinct for each i."""
    body = f"10{i:08d}"
    return body + luhn_key(body)


def person(i: int) -> dict[str, str]:
    rnd = random.Random(i)
    prof = PROFESSIONS[i % len(PROFESSIONS)]
    cp = f"{rnd.randint(1, 95):02d}{rnd.randint(0, 999):03d}"
    return {"rpps": rpps_number(i), "last": LAST[i % len(LAST)], "first": FIRST[(i // len(LAST)) % len(FIRST)],
            "prof": prof[0], "prof_label": prof[1], "sf": prof[2], "sf_label": prof[3], "cp": cp,
            "finess": f"{(i % 95) + 1:02d}0{i % 1000000:06d}", "siret": f"{(i * 7) % 10**14:014d}",
            "org": f"CABINET TEST {i % 5000}", "city": "VILLE-TEST"}


def mssante_row(i: int, *, domain: str = "mssante.test", variant: int = 0) -> list[str]:
    p = person(i)
    row = dict.fromkeys(MSSANTE_HEADER, "")
    row.update({
        "Type de BAL": "PER", "Adresse BAL": f"p{i}.{variant}@{domain}" if variant else f"p{i}@{domain}",
        "Type Identifiant PP": "8", "Identifiant PP": p["rpps"], "Identification nationale PP": "8" + p["rpps"],
        "Type identifiant structure": "1", "Identification Structure": p["finess"],
        "Civilité d'exercice": "DR", "Nom d'exercice": p["last"], "Prénom d'exercice": p["first"],
        "Catégorie profession": "C", "Libellé de catégorie profession": "Civil", "Code Profession": p["prof"],
        "Libellé Profession": p["prof_label"], "Code savoir-faire": p["sf"], "Libellé savoir-faire": p["sf_label"],
        "Dématérialisation": "O", "Raison Sociale structure BAL": p["org"],
        "L6LIGNEACHEMINEMENT structure BAL": f"{p['cp']} {p['city']}", "Code postal structure BAL": p["cp"],
        "Département structure BAL": p["cp"][:2], "Pays structure BAL": "FRANCE"})
    return [row[h] for h in MSSANTE_HEADER]


def org_row(i: int, *, domain: str = "ch-test.test", box: str = "ORG") -> list[str]:
    row = dict.fromkeys(MSSANTE_HEADER, "")
    row.update({"Type de BAL": box, "Adresse BAL": f"service{i}@{domain}", "Type identifiant structure": "1",
                "Identification Structure": f"{(i % 95) + 1:02d}0{i:06d}", "Service de rattachement": "LABORATOIRE",
                "Raison Sociale structure BAL": f"CENTRE HOSPITALIER TEST {i}", "Code postal structure BAL": "75013"})
    return [row[h] for h in MSSANTE_HEADER]


def rpps_row(i: int, *, activity: int = 0) -> list[str]:
    p = person(i)
    row = dict.fromkeys(RPPS_HEADER, "")
    row.update({
        "Type d'identifiant PP": "8", "Identifiant PP": p["rpps"], "Identification nationale PP": "8" + p["rpps"],
        "Code civilité d'exercice": "DR", "Libellé civilité exercice": "Docteur", "Nom d'exercice": p["last"],
        "Prénom d'exercice": p["first"], "Code profession": p["prof"], "Libellé profession": p["prof_label"],
        "Code catégorie professionnelle": "C", "Libellé catégorie professionnelle": "Civil",
        "Code savoir-faire": p["sf"], "Libellé savoir-faire": p["sf_label"], "Code mode exercice": "L",
        "Numéro SIRET site": p["siret"], "Numéro FINESS site": p["finess"],
        "Identifiant technique de la structure": f"R{i:09d}-{activity}", "Raison sociale site": p["org"],
        "Code postal (coord. structure)": p["cp"], "Libellé commune (coord. structure)": p["city"],
        "Code département (coord. structure)": p["cp"][:2]})
    return [row[h] for h in RPPS_HEADER]


def write_lines(path: Path, header: list[str], rows: Iterator[list[str]], *, trailing_pipe: bool = False,
                encoding: str = "utf-8") -> Path:
    end = "|\n" if trailing_pipe else "\n"
    with open(path, "w", encoding=encoding, newline="") as fh:
        fh.write("|".join(header) + end)
        for row in rows:
            fh.write("|".join(row) + end)
    return path


def write_mssante(path: Path, count: int, *, start: int = 0, extra_rows: list[str] | None = None,
                  encoding: str = "utf-8") -> Path:
    """`count` personal mailboxes; `extra_rows` (raw lines) are appended after them."""
    write_lines(path, MSSANTE_HEADER, (mssante_row(i) for i in range(start, start + count)), encoding=encoding)
    if extra_rows:
        with open(path, "a", encoding=encoding) as fh:
            for line in extra_rows:
                fh.write(line + "\n")
    return path


def write_rpps(path: Path, count: int, *, start: int = 0) -> Path:
    return write_lines(path, RPPS_HEADER, (rpps_row(i) for i in range(start, start + count)), trailing_pipe=True)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m tests.routing.gen_extractions OUT N
    import sys

    out, n = Path(sys.argv[1]), int(sys.argv[2])
    write_mssante(out, n)
