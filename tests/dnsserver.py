"""A small authoritative DNS server for tests: real DNS packets over UDP and TCP on loopback.

Why: MX routing and certificate discovery (CERT, SMIMEA) must be tested against real DNS
answers parsed by dnspython's resolver, not mocks. The zone is given as master-file text or a
dict; dnspython parses the records, so every type it knows (MX, A, AAAA, CERT, TXT, SMIMEA,
CNAME, ...) works.

Usage::

    from tests.dnsserver import DNSServer

    ZONE = '''
    $ORIGIN example.org.
    @      MX 10 mx1
    @      MX 20 mx2.example.net.
    mx1    A  192.0.2.1
    mx1    AAAA 2001:db8::1
    '''
    with DNSServer(ZONE, servfail={"broken.example.org"}) as dns_server:
        hops = await resolve_next_hops("example.org", resolver=dns_server.resolver())

    # or with a dict: {name: {rdtype: rdata text or list of rdata texts}}
    DNSServer({"example.org": {"MX": ["10 mx1.example.org."]}, "mx1.example.org": {"A": "192.0.2.1"}})

Behaviour:

- By default the server is authoritative for the whole tree (origin "."): any name that is not in
  the zone and has no name below it gets NXDOMAIN; a name that exists without the asked type
  (or an empty non-terminal) gets NOERROR with no answer (NODATA). Pass ``origin=`` to serve only
  one zone; names outside it get REFUSED.
- ``servfail``: names answered with SERVFAIL (temporary failure); ``drop``: names never answered
  (resolver timeout). Both are plain sets, editable while the server runs, as is the zone through
  :meth:`add` / :meth:`remove`.
- CNAMEs inside the zone are followed. UDP answers larger than the client's limit (512 bytes or
  its EDNS payload size) are sent truncated (TC) so the resolver retries over TCP, like large
  CERT answers in production.
- Every query is recorded in ``queries`` as ``(name, type)`` text, e.g. ``("mx1.example.org.", "A")``.

Text zones default to ``$TTL 300`` and are read relative to the root, so several ``$ORIGIN``
sections may be given in one text.
"""

from __future__ import annotations

import socketserver
import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zone

__all__ = ["DNSServer"]

ZoneSpec = str | Mapping[str, Mapping[str, str | Iterable[str]]]


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text
    return dns.name.from_text(text.rstrip(".") + "." if text not in ("", ".") else ".")


class DNSServer:
    """Authoritative test DNS server (UDP + TCP, same OS-chosen port on 127.0.0.1)."""

    def __init__(self, zone: ZoneSpec = "", *, origin: str = ".", servfail: Iterable[str] = (),
                 drop: Iterable[str] = (), ttl: int = 300, host: str = "127.0.0.1") -> None:
        self.origin = _name(origin)
        self.ttl = ttl
        self.host = host
        self.zone = dns.zone.Zone(self.origin, relativize=False)
        self.servfail: set[str] = {self._key(n) for n in servfail}
        self.drop: set[str] = {self._key(n) for n in drop}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0
        if isinstance(zone, str):
            self.load_text(zone)
        else:
            for owner, records in zone.items():
                for rdtype, values in records.items():
                    self.add(owner, rdtype, *([values] if isinstance(values, str) else values))

    # -- zone content ---------------------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        return _name(name).to_text().lower()

    def load_text(self, text: str) -> None:
        """Add the records of a master-file text (``$ORIGIN``, ``$TTL`` and records)."""
        if not text.strip():
            return
        parsed = dns.zone.from_text(f"$TTL {self.ttl}\n{text}", origin=dns.name.root, relativize=False,
                                    check_origin=False)
        with self._lock:
            for owner, node in parsed.nodes.items():
                for rdataset in node.rdatasets:
                    self._check_in_zone(owner)
                    target = self.zone.find_rdataset(owner, rdataset.rdtype, rdataset.covers, create=True)
                    target.update(rdataset)

    def add(self, name: str, rdtype: str, *rdata: str, ttl: int | None = None) -> None:
        """Add records, e.g. ``add("example.org", "MX", "10 mx1.example.org.")`` (names absolute)."""
        owner = _name(name)
        self._check_in_zone(owner)
        rdatas = [dns.rdata.from_text("IN", rdtype, text, origin=dns.name.root, relativize=False)
                  for text in rdata]
        rds = dns.rdataset.from_rdata_list(self.ttl if ttl is None else ttl, rdatas)
        with self._lock:
            target = self.zone.find_rdataset(owner, rds.rdtype, rds.covers, create=True)
            target.update(rds)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove one record type of a name, or the whole name."""
        owner = _name(name)
        with self._lock:
            if rdtype is None:
                self.zone.delete_node(owner)
            else:
                self.zone.delete_rdataset(owner, rdtype)

    def _check_in_zone(self, owner: dns.name.Name) -> None:
        if not owner.is_subdomain(self.origin):
            raise ValueError(f"{owner} is outside the zone {self.origin}")

    # -- answering ------------------------------------------------------------------------------

    def _exists_below(self, qname: dns.name.Name) -> bool:
        return any(n != qname and n.is_subdomain(qname) for n in self.zone.nodes)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """Build the response to one query (None: stay silent, for `drop`)."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        self.queries.append((qname.to_text(), dns.rdatatype.to_text(qtype)))
        key = qname.to_text().lower()
        if key in self.drop:
            return None
        if key in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if not qname.is_subdomain(self.origin):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response
        with self._lock:
            self._fill(response, qname, qtype)
        return response

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, qtype: int) -> None:
        for _ in range(8):  # follow CNAMEs inside the zone, bounded against loops
            node = self.zone.get_node(qname)
            if node is None:
                if not self._exists_below(qname) and not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return
            rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
            if rdataset is not None:
                response.answer.append(self._rrset(qname, rdataset))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                return
            response.answer.append(self._rrset(qname, cname))
            qname = cname[0].target

    @staticmethod
    def _rrset(owner: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> Any:
        rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
        rrset.update(rdataset)
        return rrset

    def _wire(self, data: bytes, *, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        response = self.answer(query)
        if response is None:
            return None
        limit = 65535
        if udp:
            limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()
        except Exception:  # a bad test zone: answer SERVFAIL rather than let the client time out
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return failed.to_wire()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> DNSServer:
        """Bind UDP and TCP on the same free port and serve from background threads."""
        server = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                wire = server._wire(data, udp=True)
                if wire is not None:
                    sock.sendto(wire, self.client_address)

        class TCPHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        return
                    (length,) = struct.unpack("!H", head)
                    wire = server._wire(self.rfile.read(length), udp=False)
                    if wire is None:
                        return
                    self.wfile.write(struct.pack("!H", len(wire)) + wire)
                    self.wfile.flush()

        for _ in range(20):
            udp = socketserver.ThreadingUDPServer((self.host, 0), UDPHandler)
            port = udp.server_address[1]
            tcp = socketserver.ThreadingTCPServer((self.host, port), TCPHandler, bind_and_activate=False)
            tcp.allow_reuse_address = True
            try:
                tcp.server_bind()
                tcp.server_activate()
            except OSError:  # port taken for TCP: try another one
                udp.server_close()
                tcp.server_close()
                continue
            break
        else:
            raise OSError("no free port for both UDP and TCP")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                      name="test-dns", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets (idempotent)."""
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------

    def _configure(self, res: dns.resolver.Resolver, timeout: float, lifetime: float) -> None:
        if not self.port:
            raise RuntimeError("DNSServer not started")
        res.nameservers = [self.host]
        res.port = self.port
        res.timeout = timeout
        res.lifetime = lifetime
        res.cache = None

    def resolver(self, *, timeout: float = 2.0, lifetime: float = 4.0) -> dns.asyncresolver.Resolver:
        """An asyncio resolver that asks only this server (no system configuration)."""
        res = dns.asyncresolver.Resolver(configure=False)
        self._configure(res, timeout, lifetime)
        return res

    def sync_resolver(self, *, timeout: float = 2.0, lifetime: float = 4.0) -> dns.resolver.Resolver:
        """The blocking equivalent of :meth:`resolver`."""
        res = dns.resolver.Resolver(configure=False)
        self._configure(res, timeout, lifetime)
        return res
