"""The MSSanté trust space: the list of authorised domains, and the names of destination policies.

Two file formats, told apart by their first character (one entry point, `parse_domain_list`):
- the ANS *liste blanche* as published (`https://espacedeconfiance.mssante.fr/listeblanchemssante.xml`):
  XML whose domain names are `//Domaine/Nom` in the namespace `https://listeblanche.mssante.fr/schema`,
  some of them internationalised (IDN). Parsed with entities, DTDs and network access off; a
  document that declares a DOCTYPE or entities is refused whole;
- a plain list: one domain per line; `#` starts a comment (whole line or trailing); blank lines
  are ignored.
Names are case-insensitive, a trailing dot is dropped, internationalised names are stored in
their ASCII (IDNA) form.

Matching rule, chosen to stay closed by default:
- `example.fr` authorises exactly `example.fr` — not its subdomains (an operator's subdomain
  is not automatically inside the trust space);
- `.example.fr` or `*.example.fr` authorises every subdomain of `example.fr` (not the name
  itself: list both lines if both are meant).

The file is re-read when its mtime, size or inode change (a `stat` per check, at most every
`check_interval` seconds). Invalid lines are skipped and reported with their line numbers; if
the file disappears or cannot be read, the last good list is kept (and the problem recorded),
so that a non-atomic replacement does not empty the trust space for a moment. Write the file
atomically (write a temporary file, then rename) to avoid reading a half-written list.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from gateway.errors import ConfigError
from gateway.safexml import declares_dtd, parser

log = logging.getLogger("msgw.trustspace")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class DestinationPolicy(enum.StrEnum):
    """What a destination domain requires (the decision function is the pipeline's)."""

    REQUIRE_SMIME = "require-smime"
    TRUST_SPACE_TLS = "trust-space-tls"
    REFUSE = "refuse"


@dataclass(frozen=True)
class LineProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class DomainList:
    exact: frozenset[str]
    suffixes: frozenset[str]  # "example.fr" for a ".example.fr" / "*.example.fr" line
    problems: tuple[LineProblem, ...] = ()

    def __len__(self) -> int:
        return len(self.exact) + len(self.suffixes)

    def is_authorised(self, domain: str) -> bool:
        name = normalise_domain(domain)
        if name is None:
            return False
        if name in self.exact:
            return True
        parts = name.split(".")
        return any(".".join(parts[i:]) in self.suffixes for i in range(1, len(parts)))


def normalise_domain(domain: str) -> str | None:
    """Lower-case ASCII form of a domain name, or None if it is not a valid host name."""
    name = domain.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return name


LISTE_BLANCHE_NS = "https://listeblanche.mssante.fr/schema"


def parse_domain_list(content: str | bytes) -> DomainList:
    """THE parser of the authorised-domain file (see the module docstring for the formats). Give
    it the file's bytes: an XML list may declare its own encoding."""
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return parse_liste_blanche(data)
    text = data.decode("utf-8", errors="replace")
    exact: set[str] = set()
    suffixes: set[str] = set()
    problems: list[LineProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1:
            problems.append(LineProblem(number, "more than one word on the line"))
            continue
        wildcard = line.startswith("*.") or line.startswith(".")
        name = normalise_domain(line[2:] if line.startswith("*.") else line.lstrip(".") if wildcard else line)
        if name is None:
            problems.append(LineProblem(number, "not a domain name"))
            continue
        (suffixes if wildcard else exact).add(name)
    return DomainList(frozenset(exact), frozenset(suffixes), tuple(problems))


def parse_liste_blanche(data: bytes) -> DomainList:
    """The ANS liste blanche XML: every `Domaine/Nom` is one authorised domain, exactly (the
    ANS lists each domain by name: no wildcard). Problems name the XML line."""
    if declares_dtd(data):
        return DomainList(frozenset(), frozenset(), (LineProblem(1, "XML with a DOCTYPE or entities (refused)"),))
    try:
        root = etree.fromstring(data, parser())
    except etree.XMLSyntaxError as exc:
        return DomainList(frozenset(), frozenset(), (LineProblem(exc.lineno or 1, f"not well-formed XML: {exc.msg}"),))
    exact: set[str] = set()
    problems: list[LineProblem] = []
    names = root.xpath("//lb:Domaine/lb:Nom", namespaces={"lb": LISTE_BLANCHE_NS})
    if not names and root.xpath("//Domaine/Nom"):
        problems.append(LineProblem(root.sourceline or 1, f"Domaine/Nom outside the namespace {LISTE_BLANCHE_NS}"))
    for node in names:
        name = normalise_domain((node.text or "").strip())
        if name is None:
            problems.append(LineProblem(node.sourceline or 0, "not a domain name"))
            continue
        exact.add(name)
    return DomainList(frozenset(exact), frozenset(), tuple(problems))


class TrustSpace:
    """The authorised-domain list from a file, reloaded when the file changes."""

    def __init__(self, path: str | Path, *, check_interval: float = 0.0) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()  # the load below is the first check (not "uptime ago")
        self.load_problem: str | None = None
        self._list = DomainList(frozenset(), frozenset())
        self.reloads = 0
        #: When the list in use was written (the file's mtime, seconds since the epoch).
        self.modified: float | None = None
        if not self._reload():
            raise ConfigError([(str(self.path), "trust.authorised_domains_file",
                                f"cannot read the authorised-domain list: {self.load_problem}")])

    @property
    def domains(self) -> DomainList:
        self._maybe_reload()
        return self._list

    @property
    def problems(self) -> tuple[LineProblem, ...]:
        return self.domains.problems

    def is_authorised(self, domain: str) -> bool:
        return self.domains.is_authorised(domain)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.check_interval and now - self._checked < self.check_interval:
            return
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.path)
            except OSError as exc:
                self.load_problem = exc.strerror or "cannot stat"
                return
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
                self._reload_locked()

    def _reload(self) -> bool:
        with self._lock:
            return self._reload_locked()

    def _reload_locked(self) -> bool:
        try:
            st = os.stat(self.path)
            data = self.path.read_bytes()
        except OSError as exc:
            self.load_problem = exc.strerror or "cannot read"
            log.warning("trust space list unreadable, keeping the previous one", extra={"fields": {
                "file": str(self.path), "error": self.load_problem}})
            return False
        self._list = parse_domain_list(data)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        self.modified = st.st_mtime
        self.load_problem = None
        self.reloads += 1
        for problem in self._list.problems:
            log.warning("trust space list: invalid line", extra={"fields": {
                "file": str(self.path), "line": problem.line, "reason": problem.reason}})
        return True


__all__ = ["LISTE_BLANCHE_NS", "DestinationPolicy", "DomainList", "LineProblem", "TrustSpace", "normalise_domain",
           "parse_domain_list", "parse_liste_blanche"]
