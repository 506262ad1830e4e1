"""The trust space read from the ANS *liste blanche* as published (XML, namespace
`https://listeblanche.mssante.fr/schema`, IDN names), beside the plain list; reloaded when the
file changes; `msgw check` says how many domains and how old the list is. Invented domains."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gateway.directory.trustspace import TrustSpace, parse_domain_list, parse_liste_blanche

NS = "https://listeblanche.mssante.fr/schema"


def liste(*names: str, encoding: str = "UTF-8") -> bytes:
    domains = "".join(f"  <Domaine><Nom>{n}</Nom><Operateur>OP TEST</Operateur></Domaine>\n" for n in names)
    return (f'<?xml version="1.0" encoding="{encoding}"?>\n<ListeBlanche xmlns="{NS}">\n{domains}</ListeBlanche>\n'
            ).encode(encoding.lower())


def test_the_ans_xml_list_authorises_each_named_domain_exactly() -> None:
    domains = parse_domain_list(liste("hopital-test.mssante.fr", "Labo-Test.MSSante.fr", "clinique-été.mssante.fr"))
    assert domains.problems == ()
    assert domains.is_authorised("hopital-test.mssante.fr")
    assert domains.is_authorised("labo-test.mssante.fr")
    ascii_form = "clinique-été.mssante.fr".encode("idna").decode()
    assert ascii_form.startswith("xn--") and ascii_form in domains.exact
    assert domains.is_authorised(ascii_form) and domains.is_authorised("clinique-été.mssante.fr")
    assert not domains.is_authorised("sub.hopital-test.mssante.fr"), "a listed name is exact: no subdomains"
    assert not domains.is_authorised("autre.mssante.fr")


def test_an_xml_list_in_its_own_encoding() -> None:
    domains = parse_domain_list(liste("clinique-été.mssante.fr", encoding="ISO-8859-1"))
    assert domains.problems == () and domains.is_authorised("clinique-été.mssante.fr")


def test_bad_entries_are_named_by_line_and_the_rest_is_kept() -> None:
    domains = parse_liste_blanche(liste("hopital-test.mssante.fr", "not a domain", ""))
    assert domains.is_authorised("hopital-test.mssante.fr") and len(domains) == 1
    assert [(p.line, p.reason) for p in domains.problems] == [(4, "not a domain name"), (5, "not a domain name")]


def test_unsafe_or_broken_xml_authorises_nothing() -> None:
    entity = (b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/hostname">]>\n'
              b'<ListeBlanche xmlns="' + NS.encode() + b'"><Domaine><Nom>&e;</Nom></Domaine></ListeBlanche>')
    refused = parse_domain_list(entity)
    assert len(refused) == 0 and "DOCTYPE" in refused.problems[0].reason
    broken = parse_domain_list(b'<ListeBlanche xmlns="' + NS.encode() + b'">\n<Domaine><Nom>a.fr</Domaine>')
    assert len(broken) == 0 and broken.problems[0].reason.startswith("not well-formed XML")
    outside = parse_domain_list(b"<ListeBlanche><Domaine><Nom>hopital-test.mssante.fr</Nom></Domaine></ListeBlanche>")
    assert len(outside) == 0 and NS in outside.problems[0].reason


def test_switching_from_the_plain_list_to_the_xml_list_is_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "trust.list"
    path.write_text("ancien.mssante.fr\n")
    space = TrustSpace(path)
    assert space.is_authorised("ancien.mssante.fr")
    tmp = tmp_path / "new.xml"
    tmp.write_bytes(liste("hopital-test.mssante.fr"))
    os.replace(tmp, path)
    assert space.is_authorised("hopital-test.mssante.fr") and not space.is_authorised("ancien.mssante.fr")
    assert space.reloads == 2


def test_msgw_check_says_how_many_domains_and_how_old(tmp_path: Path) -> None:
    from tests.e2e.harness import write_config

    setup = write_config(tmp_path / "gw", sink_port=9)
    listed = tmp_path / "gw" / "listeblanchemssante.xml"
    listed.write_bytes(liste("hopital-test.mssante.fr", "labo-test.mssante.fr"))
    text = setup.config.read_text()
    assert "[trust]" not in text
    setup.config.write_text(text + f'\n[trust]\nauthorised_domains_file = "{listed}"\n')
    msgw = Path(sys.executable).with_name("msgw")

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(msgw), "check", "--config", str(setup.config)], capture_output=True, text=True,
                              timeout=60, check=False)

    fresh = check()
    assert fresh.returncode == 0, fresh.stderr
    assert "trust.authorised_domains_file: 2 authorised domain(s), written 0 hour(s) ago" in fresh.stdout
    assert "older than" not in fresh.stderr
    ten_days = time.time() - 10 * 86400
    os.utime(listed, (ten_days, ten_days))
    stale = check()
    assert stale.returncode == 0
    assert "written 10 day(s) ago" in stale.stdout
    assert "older than 7 days" in stale.stderr and "listeblanchemssante.xml" in stale.stderr
