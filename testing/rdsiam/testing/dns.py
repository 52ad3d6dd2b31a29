"""A tiny authoritative-style DNS server on loopback, for tests of ``spec.resolveCNAME``.

:class:`DnsServer` answers UDP queries on ``127.0.0.1`` (own thread) from a record table that
tests change while it runs, the way a recursive resolver in front of Route 53 would answer::

    with DnsServer() as dns:
        dns.cname("db.internal.example", rds.endpoint)          # db.internal.example CNAME <endpoint>
        dns.a(rds.endpoint, "127.0.0.1")
        env = {"RDSIAM_DNS_SERVER": dns.address}                 # the operator's resolver uses it

Answers (dnspython builds and parses the wire messages):

- a name with a CNAME: the CNAME record, then, for other query types, the chain followed through
  the table (CNAME records first, then the final records), as a recursive resolver returns it;
- a name with records of other types only: NOERROR with an empty answer (NODATA);
- an unknown name, or a chain ending at one: NXDOMAIN (with the CNAMEs seen so far);
- ``drop = True``: no answer at all (a resolver timing out).

Every query is recorded in ``queries`` as ``(name, type)``. No global resolver configuration is
touched: clients are pointed at ``address`` explicitly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer"]

MAX_CHAIN = 16


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class DnsServer:
    """UDP DNS server on ``127.0.0.1:port`` answering from a mutable record table (see module doc)."""

    def __init__(self, *, port: int = 0, ttl: int = 5) -> None:
        self.port = port
        self.ttl = ttl
        self.drop = False
        self.queries: list[tuple[str, str]] = []
        self._records: dict[str, dict[str, list[str]]] = {}  # name -> type -> rdata texts
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        """``ip:port``, the format of ``RDSIAM_DNS_SERVER``."""
        return f"127.0.0.1:{self.port}"

    # -- records --------------------------------------------------------------------------------

    def cname(self, name: str, target: str) -> None:
        """Set ``name CNAME target`` (replacing any other record of ``name``, as DNS requires)."""
        with self._lock:
            self._records[_key(name)] = {"CNAME": [target.rstrip(".") + "."]}

    def a(self, name: str, *addresses: str) -> None:
        """Set the A records of ``name``."""
        with self._lock:
            records = self._records.setdefault(_key(name), {})
            records.pop("CNAME", None)
            records["A"] = list(addresses)

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_key(name), None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self.queries.clear()
            self.drop = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> DnsServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", self.port))
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="rdsiam-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        self._thread = self._sock = None

    def __enter__(self) -> DnsServer:
        return self.start() if self._sock is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):  # a malformed query gets no answer, like many servers
                reply = self.answer(data)
                if reply is not None:
                    sock.sendto(reply, peer)

    def answer(self, wire: bytes) -> bytes | None:
        """The reply to one query in wire format (``None``: dropped)."""
        query = dns.message.from_wire(wire)
        question = query.question[0]
        qname = question.name.to_text(omit_final_dot=True)
        qtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((qname, qtype))
            if self.drop:
                return None
            records = {k: {t: list(v) for t, v in r.items()} for k, r in self._records.items()}
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        name = _key(qname)
        for _ in range(MAX_CHAIN):
            entry = records.get(name)
            if entry is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if "CNAME" in entry:
                target = entry["CNAME"][0]
                response.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN", "CNAME", target))
                if question.rdtype in (dns.rdatatype.CNAME, dns.rdatatype.ANY):
                    break
                name = _key(target)
                continue
            if qtype in entry:
                response.answer.append(dns.rrset.from_text_list(name + ".", self.ttl, "IN", qtype, entry[qtype]))
            break  # the records of another type only: NODATA
        return bytes(response.to_wire())
