"""The authorised-domain list: parsing (one function), matching rule, reload on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.directory.trustspace import DestinationPolicy, TrustSpace, parse_domain_list
from gateway.errors import ConfigError


def test_parse_comments_blank_lines_and_problems() -> None:
    text = ("# liste blanche MSSanté (TEST)\n"
            "\n"
            "mssante.test\n"
            "  CH-Exemple.test.   # trailing comment, case and trailing dot\n"
            "*.operateur.test\n"
            ".region.test\n"
            "not a domain\n"
            "bad_underscore.test\n"
            "nodot\n"
            "hôpital.test\n")
    dl = parse_domain_list(text)
    assert dl.exact == {"mssante.test", "ch-exemple.test", "xn--hpital-ixa.test"}
    assert dl.suffixes == {"operateur.test", "region.test"}
    assert [(p.line, p.reason) for p in dl.problems] == [
        (7, "more than one word on the line"), (8, "not a domain name"), (9, "not a domain name")]
    assert len(dl) == 5


@pytest.mark.parametrize(("domain", "ok"), [
    ("mssante.test", True), ("MSSANTE.TEST.", True), ("sub.mssante.test", False),  # exact entries: no subdomains
    ("a.operateur.test", True), ("a.b.operateur.test", True), ("operateur.test", False),  # wildcard: subdomains only
    ("x.region.test", True), ("evil-mssante.test", False), ("mssante.test.evil.test", False),
    ("hôpital.test", True), ("", False), ("not a domain", False),
])
def test_matching_rule(domain: str, ok: bool) -> None:
    dl = parse_domain_list("mssante.test\n*.operateur.test\n.region.test\nhôpital.test\n")
    assert dl.is_authorised(domain) is ok


def test_reload_when_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "domains.txt"
    f.write_text("a.test\n")
    ts = TrustSpace(f)
    assert ts.is_authorised("a.test") and not ts.is_authorised("b.test")
    assert ts.reloads == 1
    assert ts.is_authorised("a.test") and ts.reloads == 1  # unchanged file: not re-read
    tmp = tmp_path / "domains.tmp"
    tmp.write_text("b.test\n# a.test removed\n")
    os.replace(tmp, f)  # atomic replacement, as operators should do
    assert ts.is_authorised("b.test") and not ts.is_authorised("a.test")
    assert ts.reloads == 2
    # same size, new mtime: still noticed
    f.write_text("c.test\n")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert ts.is_authorised("c.test")
    # file gone: the last good list stays, the problem is recorded
    f.unlink()
    assert ts.is_authorised("c.test") and ts.load_problem


def test_check_interval_limits_stat_calls(tmp_path: Path) -> None:
    f = tmp_path / "domains.txt"
    f.write_text("a.test\n")
    ts = TrustSpace(f, check_interval=3600)
    f.write_text("b.test\nzz.test\n")
    assert ts.is_authorised("a.test")  # not re-checked within the interval


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TrustSpace(tmp_path / "missing.txt")


def test_policy_names() -> None:
    assert [p.value for p in DestinationPolicy] == ["require-smime", "trust-space-tls", "refuse"]
    assert DestinationPolicy("trust-space-tls") is DestinationPolicy.TRUST_SPACE_TLS
    assert DestinationPolicy.REFUSE == "refuse"
