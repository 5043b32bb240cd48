"""An in-process S3-protocol test server (path-style, anonymous) that can also speak with GCS's
accent, inject faults from a data-driven plan and record every request it answered.

moto is the reference for protocol behaviour; this server exists for what moto cannot do:
GCS response headers (``x-goog-hash`` as one or two header lines, composite objects), faults
on chosen keys or at a seeded rate, and exact request accounting (including whether an
``Authorization`` header was sent).

S3's additional checksums: an object put with ``checksum_algorithm`` (CRC64NVME, CRC32C,
CRC32 or SHA256; the server's ``checksum_algorithm`` is the default) is listed with
``ChecksumAlgorithm`` and ``ChecksumType``, and a GET of the whole object or a HEAD that
sends ``x-amz-checksum-mode: ENABLED`` answers with ``x-amz-checksum-<algorithm>`` and
``x-amz-checksum-type``, as S3 does; a ranged GET gets none (S3 sends none either).
``checksum_type="COMPOSITE"`` sends a checksum of part checksums (``<base64>-N``).

Supported requests::

    GET  /<bucket>?list-type=2&prefix=&start-after=&continuation-token=&max-keys=
         &delimiter=&encoding-type=url                      ListObjectsV2
    GET  /<bucket>/<key>   [Range, If-Match, If-None-Match, ?partNumber=N]   GetObject
    HEAD /<bucket>/<key>   [same]                                           HeadObject
    HEAD /<bucket>                                                         HeadBucket

Anything else answers 501 NotImplemented.

The fault model
---------------
A :class:`FaultPlan` is a list of :class:`Fault` rules plus a seeded RNG. Every request is
one of three *request kinds*: ``GET`` (object), ``HEAD`` (object) or ``LIST``. Each rule has
a ``kind`` (see :data:`FAULT_KINDS`) and a scope:

- ``on``: the request kinds it may hit (default: every kind the fault makes sense for);
- ``keys`` / ``key_prefix``: the *subject* it may hit. The subject is the object key for GET
  and HEAD, and for LIST either the listed object's key (per-object listing faults, marked
  "per listed object" below) or the request's ``prefix`` parameter (all other LIST faults);
- ``rate``: probability of firing when in scope (drawn from the plan's RNG only when < 1);
- ``times``: how often it may fire in total (None: no limit).

A rule *fires* at most once per request (once per listed object for per-listed-object
kinds); ``fired`` counts firings and :meth:`FaultPlan.fired` sums them per kind. Within a
request the stages run in this order: latency, error status, object lookup, ``changed``,
header/ETag faults, conditional headers and ranges, then body faults.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import http.server
import random
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit
from xml.sax.saxutils import escape

import google_crc32c
from awscrt import checksums

Flavour = Literal["s3", "gcs"]
RequestKind = Literal["GET", "HEAD", "LIST"]
GoogHashStyle = Literal["one", "two"]
FaultKind = Literal[
    "latency",
    "status_500",
    "slow_down",
    "throttle_429",
    "reset",
    "truncate",
    "flip",
    "wrong_etag",
    "listing_etag",
    "missing_etag",
    "multipart_etag",
    "bad_goog_hash",
    "bad_amz_checksum",
    "changed",
    "list_omit",
    "list_extra",
    "trickle",
    "endless_list",
]

_ALL: frozenset[RequestKind] = frozenset({"GET", "HEAD", "LIST"})
_OBJECT: frozenset[RequestKind] = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class FaultKindInfo:
    """Where a fault kind can apply and what it does; the table below is the documentation."""

    applies_to: frozenset[RequestKind]
    per_listed_object: bool
    effect: str


FAULT_KINDS: Mapping[FaultKind, FaultKindInfo] = {
    "latency": FaultKindInfo(
        _ALL, False, "wait `seconds` before sending the status line (time to first byte)"
    ),
    "status_500": FaultKindInfo(_ALL, False, "answer 500 InternalError (XML body)"),
    "slow_down": FaultKindInfo(_ALL, False, "answer 503 SlowDown (XML body, Retry-After: 1)"),
    "throttle_429": FaultKindInfo(_ALL, False, "answer 429 TooManyRequests (XML body)"),
    "reset": FaultKindInfo(
        frozenset({"GET", "LIST"}),
        False,
        "send headers and `after_bytes` body bytes (default half), then close with RST "
        "(SO_LINGER 0); an empty body gets headers only",
    ),
    "truncate": FaultKindInfo(
        frozenset({"GET", "LIST"}),
        False,
        "promise the full Content-Length, send `after_bytes` body bytes (default half), "
        "then close normally (FIN)",
    ),
    "flip": FaultKindInfo(
        frozenset({"GET"}),
        False,
        "same length and headers, one body byte XOR 0xFF at `offset` (default: the middle)",
    ),
    "wrong_etag": FaultKindInfo(
        _ALL,
        True,
        "ETag (headers and listing) is a well-formed MD5 that is not the MD5 of the bytes; "
        "per listed object",
    ),
    "listing_etag": FaultKindInfo(
        frozenset({"LIST"}),
        True,
        "only the listing shows a wrong (MD5-shaped) ETag; GET/HEAD stay right; per listed object",
    ),
    "missing_etag": FaultKindInfo(_OBJECT, False, "no ETag response header"),
    "multipart_etag": FaultKindInfo(
        _ALL,
        True,
        "ETag shaped like a multipart one ('<md5>-2'), in headers and listing; per listed object",
    ),
    "bad_goog_hash": FaultKindInfo(
        _OBJECT, False, "GCS flavour: x-goog-hash carries a wrong crc32c and md5"
    ),
    "bad_amz_checksum": FaultKindInfo(
        _OBJECT, False, "S3 flavour: x-amz-checksum-<algorithm> carries a wrong value"
    ),
    "changed": FaultKindInfo(
        _OBJECT,
        False,
        "the object was replaced after it was listed: GET/HEAD serve the bytes + b'v2' "
        "with their own (correct) ETag, size and hashes; the listing keeps the old ones",
    ),
    "list_omit": FaultKindInfo(
        frozenset({"LIST"}), True, "leave the object out of the listing; per listed object"
    ),
    "list_extra": FaultKindInfo(
        frozenset({"LIST"}),
        False,
        "append `extra_keys` to the first page of a listing (even outside the prefix; "
        "hostile keys welcome). A key also put() on the server is listed with its size and "
        "ETag, any other with Size 0 and the MD5 of nothing",
    ),
    "trickle": FaultKindInfo(
        frozenset({"GET", "LIST"}),
        False,
        "send the headers at once, then the body one byte every `seconds` (default 1)",
    ),
    "endless_list": FaultKindInfo(
        frozenset({"LIST"}),
        False,
        "every page lists the prefix from its start and says IsTruncated with a fresh "
        "continuation token, forever",
    ),
}

_ERROR_STATUS: Mapping[FaultKind, tuple[int, str, str]] = {
    "status_500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "throttle_429": (429, "TooManyRequests", "Too many requests, please slow down."),
}


@dataclass(slots=True)
class Fault:
    """One fault rule: what happens (``kind``), where (``on``, ``keys``, ``key_prefix``),
    how often (``rate``, ``times``) and its parameters."""

    kind: FaultKind
    rate: float = 1.0
    keys: frozenset[str] | None = None
    key_prefix: str | None = None
    on: frozenset[RequestKind] | None = None
    times: int | None = None
    seconds: float = 0.0
    after_bytes: int | None = None
    offset: int | None = None
    extra_keys: tuple[str, ...] = ()
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], not {self.rate}")
        if self.keys is not None:
            self.keys = frozenset(self.keys)
        allowed = FAULT_KINDS[self.kind].applies_to
        if self.on is None:
            self.on = allowed
        else:
            self.on = frozenset(self.on)
            if not self.on <= allowed:
                raise ValueError(f"{self.kind} applies only to {sorted(allowed)}")

    def in_scope(self, request_kind: RequestKind, subject: str | None) -> bool:
        assert self.on is not None
        if request_kind not in self.on:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.keys is not None and subject not in self.keys:
            return False
        return self.key_prefix is None or (
            subject is not None and subject.startswith(self.key_prefix)
        )


class FaultPlan:
    """The faults a server injects: rules tried in the order they were added, one seeded RNG."""

    def __init__(self, faults: Iterable[Fault] = (), *, seed: int = 0) -> None:
        self.faults: list[Fault] = list(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(
        self,
        kind: FaultKind,
        *,
        rate: float = 1.0,
        keys: Iterable[str] | None = None,
        key_prefix: str | None = None,
        on: Iterable[RequestKind] | None = None,
        times: int | None = None,
        seconds: float = 0.0,
        after_bytes: int | None = None,
        offset: int | None = None,
        extra_keys: Iterable[str] = (),
    ) -> Fault:
        """Add one rule and return it (its ``fired`` counter is live)."""
        fault = Fault(
            kind=kind,
            rate=rate,
            keys=None if keys is None else frozenset(keys),
            key_prefix=key_prefix,
            on=None if on is None else frozenset(on),
            times=times,
            seconds=seconds,
            after_bytes=after_bytes,
            offset=offset,
            extra_keys=tuple(extra_keys),
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def fired(self, kind: FaultKind | None = None) -> int:
        """How many times rules of ``kind`` (or of any kind) fired so far."""
        with self._lock:
            return sum(f.fired for f in self.faults if kind is None or f.kind == kind)

    def draw(self, kind: FaultKind, request_kind: RequestKind, subject: str | None) -> Fault | None:
        """The first rule of ``kind`` that fires for this request (and count it), else None."""
        with self._lock:
            for fault in self.faults:
                if fault.kind != kind or not fault.in_scope(request_kind, subject):
                    continue
                if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                    continue
                fault.fired += 1
                return fault
        return None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as the server holds it, with everything its response headers need."""

    data: bytes
    etag: str  # unquoted
    last_modified: float
    generation: int
    md5: bytes
    crc32c: bytes
    part_sizes: tuple[int, ...] | None = None
    goog_hash: GoogHashStyle | None = None
    composite: bool = False
    checksum_algorithm: str | None = None  # S3's additional checksum, e.g. "CRC64NVME"
    checksum_type: Literal["FULL_OBJECT", "COMPOSITE"] = "FULL_OBJECT"

    @property
    def amz_checksum(self) -> str | None:
        """The x-amz-checksum-<algorithm> value S3 would send, or None."""
        if self.checksum_algorithm is None:
            return None
        value = amz_checksum(self.checksum_algorithm, self.data)
        if self.checksum_type == "COMPOSITE":
            return f"{value}-{len(self.part_sizes or (self.size,))}"
        return value

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server answered, as it arrived, and the status it got."""

    method: str
    path: str  # URL-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, list[str]]  # lower-cased names, every value of repeated headers
    status: int
    kind: RequestKind | Literal["HEAD_BUCKET", "OTHER"]
    bucket: str | None
    key: str | None
    faults: tuple[FaultKind, ...] = ()

    @property
    def authorization(self) -> str | None:
        """The Authorization header's value (None when absent; may be '' when sent empty)."""
        values = self.headers.get("authorization")
        return values[0] if values else None

    @property
    def has_authorization(self) -> bool:
        return "authorization" in self.headers


@dataclass(slots=True)
class _Reply:
    """What the handler writes: the protocol decisions are made before any socket is touched."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    delay: float = 0.0
    cut: Literal["reset", "truncate"] | None = None
    cut_after: int = 0
    trickle: float = 0.0  # seconds between body bytes
    faults: list[FaultKind] = field(default_factory=list)


_REASONS = {code.value: code.phrase for code in HTTPStatus}
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_MAX_KEYS = 1000
_CONTROL = {c: f"&#x{c:X};" for c in range(32) if chr(c) not in "\t\n\r"}


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives an object uploaded in parts of ``part_size`` bytes (last may be short)."""
    digests = [
        hashlib.md5(data[i : i + part_size], usedforsecurity=False).digest()
        for i in range(0, max(len(data), 1), part_size)
    ]
    return f"{md5_hex(b''.join(digests))}-{len(digests)}"


def goog_hash_values(data: bytes) -> tuple[str, str]:
    """(crc32c, md5) of ``data`` as base64, the way ``x-goog-hash`` carries them."""
    crc = struct.pack(">I", google_crc32c.value(data))
    md5 = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(crc).decode(), base64.b64encode(md5).decode()


def amz_checksum(algorithm: str, data: bytes) -> str:
    """The base64 value S3 stores for ``data`` under ``algorithm`` (big-endian CRCs)."""
    name = algorithm.upper()
    if name == "CRC64NVME":
        raw = checksums.crc64nvme(data).to_bytes(8, "big")
    elif name == "CRC32C":
        raw = struct.pack(">I", google_crc32c.value(data))
    elif name == "CRC32":
        raw = struct.pack(">I", zlib.crc32(data))
    elif name == "SHA256":
        raw = hashlib.sha256(data).digest()
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return base64.b64encode(raw).decode()


def _xml_text(value: str) -> str:
    # XML 1.0 cannot carry most control characters even as references; S3 sends them as
    # references anyway, which is why clients ask for encoding-type=url.
    return escape(value).translate(_CONTROL)


def _error_xml(code: str, message: str, **extra: str) -> bytes:
    parts = [f"<Code>{code}</Code>", f"<Message>{_xml_text(message)}</Message>"]
    parts += [f"<{name}>{_xml_text(value)}</{name}>" for name, value in extra.items()]
    parts.append(f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId>")
    return (_XML_DECL + "<Error>" + "".join(parts) + "</Error>").encode()


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(first, last) inclusive for one ``bytes=`` range, None to ignore the header (malformed
    or several ranges, as S3 does), or "unsatisfiable"."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_s:
            suffix = int(last_s)
            if suffix <= 0 or size == 0:
                return "unsatisfiable"
            return max(size - suffix, 0), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else None
    except ValueError:
        return None
    if last is not None and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    if last is None:
        last = size - 1
    return first, min(last, size - 1)


def _etag_matches(header: str, etag: str | None) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    if "*" in candidates:
        return True
    return etag is not None and any(c.removeprefix("W/").strip('"') == etag for c in candidates)


class S3TestServer:
    """A threaded HTTP/1.1 (keep-alive) server on 127.0.0.1 holding objects in memory.

    Use as a context manager; ``endpoint`` is ``http://127.0.0.1:PORT``. ``faults`` may be
    replaced or extended at any time; ``errors`` collects exceptions from the server's own
    code (a test should expect it empty).
    """

    def __init__(
        self,
        flavour: Flavour = "s3",
        seed: int = 0,
        *,
        goog_hash: GoogHashStyle = "one",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        checksum_algorithm: str | None = None,
    ) -> None:
        if flavour not in get_args(Flavour):
            raise ValueError(f"flavour must be 's3' or 'gcs', not {flavour!r}")
        self.flavour: Flavour = flavour
        self.goog_hash: GoogHashStyle = goog_hash
        self.checksum_algorithm = checksum_algorithm  # put()'s default (S3 flavour)
        self.requested_port = port  # 0: any free port
        self.tls = tls  # serve HTTPS with this server context
        self.accepted = 0  # connections accepted (TLS or not)
        self.in_flight = 0  # requests being answered now
        self.peak_in_flight = 0  # the most at once since start (or reset_peak)
        self.faults = FaultPlan(seed=seed)
        self.errors: list[BaseException] = []
        self._buckets: dict[str, dict[str, StoredObject]] = {}
        self._sorted_keys: dict[str, list[str]] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._generation = 1_700_000_000_000_000
        self._connections: set[socket.socket] = set()
        self._reset_connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> S3TestServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"S3TestServer:{self.port}",
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, drop every open connection and join every thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        with self._lock:
            self._stopping.set()
            open_connections = list(self._connections)
        httpd.shutdown()
        thread.join()
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()  # joins the per-connection threads
        self._httpd = self._thread = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    # -- objects -----------------------------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})
            self._sorted_keys.pop(bucket, None)

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        etag: str | None = None,
        part_size: int | None = None,
        goog_hash: GoogHashStyle | None = None,
        composite: bool = False,
        checksum_algorithm: str | None = "default",
        checksum_type: Literal["FULL_OBJECT", "COMPOSITE"] = "FULL_OBJECT",
    ) -> StoredObject:
        """Store an object (creating the bucket). The ETag is the MD5 hex of ``data``, or the
        multipart ETag when ``part_size`` is given, or ``etag`` verbatim. ``goog_hash``
        overrides the server's x-goog-hash style for this object; ``composite`` makes it a
        GCS composite object (ETag not an MD5, x-goog-hash without md5). ``checksum_algorithm``:
        S3's additional checksum ("default": the server's, None: none)."""
        if checksum_algorithm == "default":
            checksum_algorithm = self.checksum_algorithm
        if checksum_algorithm is not None:
            amz_checksum(checksum_algorithm, b"")  # refuse an unknown name now
        if part_size is not None and part_size <= 0:
            raise ValueError("part_size must be positive")
        crc, md5 = goog_hash_values(data)
        with self._lock:
            self._generation += 1
            generation = self._generation
        if etag is None:
            if composite:
                etag = base64.b64encode(struct.pack(">Q", generation)).decode()
            elif part_size is not None:
                etag = multipart_etag(data, part_size)
            else:
                etag = md5_hex(data)
        parts = None
        if part_size is not None:
            parts = tuple(
                min(part_size, len(data) - i) for i in range(0, max(len(data), 1), part_size)
            )
        stored = StoredObject(
            data=data,
            etag=etag.strip('"'),
            last_modified=float(int(time.time())),
            generation=generation,
            md5=base64.b64decode(md5),
            crc32c=base64.b64decode(crc),
            part_sizes=parts,
            goog_hash=goog_hash,
            composite=composite,
            checksum_algorithm=None if checksum_algorithm is None else checksum_algorithm.upper(),
            checksum_type=checksum_type,
        )
        with self._lock:
            self._buckets.setdefault(bucket, {})[key] = stored
            self._sorted_keys.pop(bucket, None)
        return stored

    def put_many(self, bucket: str, objects: Mapping[str, bytes]) -> None:
        for key, data in objects.items():
            self.put(bucket, key, data)

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            self._buckets.get(bucket, {}).pop(key, None)
            self._sorted_keys.pop(bucket, None)

    def get(self, bucket: str, key: str) -> StoredObject | None:
        with self._lock:
            return self._buckets.get(bucket, {}).get(key)

    def keys(self, bucket: str) -> list[str]:
        with self._lock:
            return list(self._keys_locked(bucket))

    def _keys_locked(self, bucket: str) -> list[str]:
        keys = self._sorted_keys.get(bucket)
        if keys is None:
            keys = sorted(self._buckets.get(bucket, {}))
            self._sorted_keys[bucket] = keys
        return keys

    # -- request log -------------------------------------------------------------------

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def count(self, method: str = "GET", key_prefix: str | None = None) -> int:
        """Requests of one kind: "GET"/"HEAD" count object requests, "LIST" listings, "*" all.
        ``key_prefix`` filters by object key (for LIST: by the listing's prefix)."""
        n = 0
        for req in self.requests():
            if method != "*" and req.kind != method:
                continue
            if key_prefix is not None:
                subject = req.key if req.kind != "LIST" else req.query.get("prefix", [""])[0]
                if subject is None or not subject.startswith(key_prefix):
                    continue
            n += 1
        return n

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_in_flight = self.in_flight

    def _answering(self, change: int) -> None:
        with self._lock:
            self.in_flight += change
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- protocol (no sockets below this line until _Handler) ----------------------------

    def _respond(
        self, method: str, target: str, headers: Mapping[str, list[str]]
    ) -> tuple[_Reply, RecordedRequest]:
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        bucket, _, key = path.lstrip("/").partition("/")
        kind: RequestKind | Literal["HEAD_BUCKET", "OTHER"]
        if method in ("GET", "HEAD") and bucket and key:
            kind = "GET" if method == "GET" else "HEAD"
        elif method == "GET" and bucket and "list-type" in query:
            kind = "LIST"
        elif method == "HEAD" and bucket:
            kind = "HEAD_BUCKET"
        else:
            kind = "OTHER"

        def first(name: str) -> str | None:
            values = headers.get(name)
            return values[0] if values else None

        try:
            if kind in ("GET", "HEAD"):
                reply = self._object_reply(kind, bucket, key, query, first)
            elif kind == "LIST":
                reply = self._list_reply(bucket, query)
            elif kind == "HEAD_BUCKET":
                with self._lock:
                    exists = bucket in self._buckets
                reply = _Reply(200 if exists else 404, self._common_headers())
            else:
                reply = self._error(501, "NotImplemented", "Not implemented by S3TestServer.")
        except Exception as exc:  # a bug here must show in the test, not hang the client
            self.errors.append(exc)
            reply = self._error(500, "InternalError", f"S3TestServer bug: {exc!r}")
        if method == "HEAD":
            reply.body = b""
            reply.cut = None
        recorded = RecordedRequest(
            method=method,
            path=path,
            query=query,
            headers={name: list(values) for name, values in headers.items()},
            status=reply.status,
            kind=kind,
            bucket=bucket or None,
            key=key or None,
            faults=tuple(reply.faults),
        )
        return reply, recorded

    def _common_headers(self) -> list[tuple[str, str]]:
        request_id = uuid.uuid4().hex[:16].upper()
        if self.flavour == "gcs":
            return [("X-GUploader-UploadID", request_id)]
        return [("x-amz-request-id", request_id), ("x-amz-id-2", request_id.lower())]

    def _error(self, status: int, code: str, message: str, **extra: str) -> _Reply:
        body = _error_xml(code, message, **extra)
        headers = [
            *self._common_headers(),
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
        ]
        if code == "SlowDown":
            headers.append(("Retry-After", "1"))
        return _Reply(status, headers, body)

    def _front_faults(
        self, kind: RequestKind, subject: str | None
    ) -> tuple[float, list[FaultKind], _Reply | None]:
        """Latency and error-status faults, shared by every request kind."""
        fired: list[FaultKind] = []
        delay = 0.0
        latency = self.faults.draw("latency", kind, subject)
        if latency is not None:
            delay = latency.seconds
            fired.append("latency")
        for fault_kind, (status, code, message) in _ERROR_STATUS.items():
            if self.faults.draw(fault_kind, kind, subject) is not None:
                fired.append(fault_kind)
                reply = self._error(status, code, message)
                reply.delay, reply.faults = delay, fired
                return delay, fired, reply
        return delay, fired, None

    def _body_faults(self, reply: _Reply, kind: RequestKind, subject: str | None) -> None:
        body_len = len(reply.body)
        trickle = self.faults.draw("trickle", kind, subject)
        if trickle is not None:
            reply.faults.append("trickle")
            reply.trickle = trickle.seconds or 1.0
        for cut in ("reset", "truncate"):
            fault = self.faults.draw(cut, kind, subject)
            if fault is not None:
                reply.faults.append(cut)
                reply.cut = cut
                after = body_len // 2 if fault.after_bytes is None else fault.after_bytes
                reply.cut_after = max(0, min(after, body_len - 1))
                return
        if kind == "GET" and body_len:
            fault = self.faults.draw("flip", kind, subject)
            if fault is not None:
                reply.faults.append("flip")
                at = body_len // 2 if fault.offset is None else min(fault.offset, body_len - 1)
                body = bytearray(reply.body)
                body[at] ^= 0xFF
                reply.body = bytes(body)

    def _object_reply(
        self,
        kind: RequestKind,
        bucket: str,
        key: str,
        query: Mapping[str, list[str]],
        header: Callable[[str], str | None],
    ) -> _Reply:
        delay, fired, error = self._front_faults(kind, key)
        if error is not None:
            return error
        with self._lock:
            objects = self._buckets.get(bucket)
            stored = None if objects is None else objects.get(key)
        if objects is None:
            reply = self._error(
                404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket
            )
        elif stored is None:
            reply = self._error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        else:
            reply = self._object_found(kind, key, stored, query, header, fired)
        reply.delay, reply.faults = delay, fired
        if 200 <= reply.status < 300:
            self._body_faults(reply, kind, key)
        return reply

    def _object_found(
        self,
        kind: RequestKind,
        key: str,
        stored: StoredObject,
        query: Mapping[str, list[str]],
        header: Callable[[str], str | None],
        fired: list[FaultKind],
    ) -> _Reply:
        if self.faults.draw("changed", kind, key) is not None:
            fired.append("changed")
            data = stored.data + b"v2"
            crc, md5 = goog_hash_values(data)
            stored = StoredObject(
                data=data,
                etag=md5_hex(data),
                last_modified=stored.last_modified + 1,
                generation=stored.generation + 1,
                md5=base64.b64decode(md5),
                crc32c=base64.b64decode(crc),
                goog_hash=stored.goog_hash,
                checksum_algorithm=stored.checksum_algorithm,
            )
        etag: str | None = self._faulted_etag(kind, key, stored, fired)
        if self.faults.draw("missing_etag", kind, key) is not None:
            fired.append("missing_etag")
            etag = None
        headers = self._common_headers()
        headers += [
            ("Last-Modified", formatdate(stored.last_modified, usegmt=True)),
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
        ]
        if etag is not None:
            headers.append(("ETag", f'"{etag}"'))
        if self.flavour == "gcs":
            headers += self._goog_headers(kind, key, stored, fired)
        whole = header("range") is None and "partNumber" not in query
        asked = (header("x-amz-checksum-mode") or "").upper() == "ENABLED"
        if self.flavour == "s3" and asked and whole:
            headers += self._amz_checksum_headers(kind, key, stored, fired)

        if_match = header("if-match")
        if if_match is not None and not _etag_matches(if_match, etag):
            return self._error(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                Condition="If-Match",
            )
        if_none_match = header("if-none-match")
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return _Reply(304, [h for h in headers if h[0] != "Content-Type"])

        size = stored.size
        span: tuple[int, int] | None = None
        part_number = query.get("partNumber", [None])[0]
        if part_number is not None:
            parts = stored.part_sizes or (size,)
            try:
                n = int(part_number)
            except ValueError:
                n = 0
            if not 1 <= n <= len(parts):
                return self._error(
                    416,
                    "InvalidPartNumber",
                    "The requested partnumber is not satisfiable",
                    PartNumberRequested=part_number,
                    ActualPartCount=str(len(parts)),
                )
            start = sum(parts[: n - 1])
            span = (start, start + parts[n - 1] - 1)
            if stored.part_sizes is not None:
                headers.append(("x-amz-mp-parts-count", str(len(parts))))
        else:
            range_header = header("range")
            if range_header is not None:
                parsed = _parse_range(range_header, size)
                if parsed == "unsatisfiable":
                    reply = self._error(
                        416,
                        "InvalidRange",
                        "The requested range is not satisfiable",
                        RangeRequested=range_header,
                        ActualObjectSize=str(size),
                    )
                    reply.headers.append(("Content-Range", f"bytes */{size}"))
                    return reply
                if isinstance(parsed, tuple):
                    span = parsed
        if span is None or (part_number is not None and stored.part_sizes is None):
            body = stored.data
            status = 200
        else:
            first, last = span
            body = stored.data[first : last + 1]
            status = 206
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        headers.append(("Content-Length", str(len(body))))
        return _Reply(status, headers, body)

    def _faulted_etag(
        self, kind: RequestKind, key: str, stored: StoredObject, fired: list[FaultKind]
    ) -> str:
        if self.faults.draw("wrong_etag", kind, key) is not None:
            fired.append("wrong_etag")
            return md5_hex(stored.data + b"wrong")
        if self.faults.draw("multipart_etag", kind, key) is not None:
            fired.append("multipart_etag")
            return md5_hex(b"multipart" + stored.data) + "-2"
        return stored.etag

    def _goog_headers(
        self, kind: RequestKind, key: str, stored: StoredObject, fired: list[FaultKind]
    ) -> list[tuple[str, str]]:
        crc, md5 = stored.crc32c, stored.md5
        if self.faults.draw("bad_goog_hash", kind, key) is not None:
            fired.append("bad_goog_hash")
            crc = bytes(b ^ 0xFF for b in crc)
            md5 = bytes(b ^ 0xFF for b in md5)
        values = [f"crc32c={base64.b64encode(crc).decode()}"]
        if not stored.composite:
            values.append(f"md5={base64.b64encode(md5).decode()}")
        style = stored.goog_hash or self.goog_hash
        if style == "two":
            headers = [("x-goog-hash", v) for v in values]
        else:
            headers = [("x-goog-hash", ",".join(values))]
        headers += [
            ("x-goog-generation", str(stored.generation)),
            ("x-goog-metageneration", "1"),
            ("x-goog-stored-content-length", str(stored.size)),
            ("x-goog-stored-content-encoding", "identity"),
            ("x-goog-storage-class", "STANDARD"),
        ]
        if stored.composite:
            headers.append(("x-goog-component-count", "2"))
        return headers

    def _amz_checksum_headers(
        self, kind: RequestKind, key: str, stored: StoredObject, fired: list[FaultKind]
    ) -> list[tuple[str, str]]:
        value = stored.amz_checksum
        if value is None or stored.checksum_algorithm is None:
            return []
        if self.faults.draw("bad_amz_checksum", kind, key) is not None:
            fired.append("bad_amz_checksum")
            value = amz_checksum(stored.checksum_algorithm, stored.data + b"wrong")
        return [
            (f"x-amz-checksum-{stored.checksum_algorithm.lower()}", value),
            ("x-amz-checksum-type", stored.checksum_type),
        ]

    def _list_reply(self, bucket: str, query: Mapping[str, list[str]]) -> _Reply:
        def param(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        prefix = param("prefix") or ""
        delay, fired, error = self._front_faults("LIST", prefix)
        if error is not None:
            return error
        with self._lock:
            objects = self._buckets.get(bucket)
            keys = None if objects is None else self._keys_locked(bucket)
            snapshot = None if objects is None else dict(objects)
        if keys is None or snapshot is None:
            reply = self._error(
                404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket
            )
            reply.delay, reply.faults = delay, fired
            return reply
        try:
            max_keys = min(int(param("max-keys") or _MAX_KEYS), _MAX_KEYS)
        except ValueError:
            return self._error(400, "InvalidArgument", "Provided max-keys not an integer")
        max_keys = max(max_keys, 0)
        token = param("continuation-token")
        endless = self.faults.draw("endless_list", "LIST", prefix) is not None
        if endless:
            fired.append("endless_list")
            token = None  # every page starts over
        start_after = param("start-after")
        delimiter = param("delimiter") or None
        url_encode = param("encoding-type") == "url"
        marker = ""
        if token is not None:
            try:
                marker = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                return self._error(
                    400, "InvalidArgument", "The continuation token provided is incorrect"
                )
        elif start_after:
            marker = start_after

        entries, common, next_marker = _page(keys, prefix, marker, delimiter, max_keys)

        def enc(value: str) -> str:
            return _xml_text(quote_plus(value, safe="/") if url_encode else value)

        contents: list[str] = []
        for key in entries:
            if self.faults.draw("list_omit", "LIST", key) is not None:
                fired.append("list_omit")
                continue
            stored = snapshot[key]
            etag = self._listing_etag(key, stored, fired)
            contents.append(
                self._contents_xml(
                    enc(key), etag, stored.size, stored.last_modified, stored.generation, stored
                )
            )
        if token is None:
            extra = self.faults.draw("list_extra", "LIST", prefix)
            if extra is not None:
                fired.append("list_extra")
                for key in extra.extra_keys:
                    stored_extra = snapshot.get(key)
                    if stored_extra is None:
                        contents.append(self._contents_xml(enc(key), md5_hex(b""), 0, 0.0, 1))
                    else:
                        contents.append(
                            self._contents_xml(
                                enc(key),
                                stored_extra.etag,
                                stored_extra.size,
                                stored_extra.last_modified,
                                stored_extra.generation,
                            )
                        )

        xml = [
            _XML_DECL,
            f'<ListBucketResult xmlns="{_S3_NS}">',
            f"<Name>{_xml_text(bucket)}</Name>",
            f"<Prefix>{enc(prefix)}</Prefix>",
        ]
        if token is not None:
            xml.append(f"<ContinuationToken>{_xml_text(token)}</ContinuationToken>")
        if start_after is not None:
            xml.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
        xml.append(f"<KeyCount>{len(contents) + len(common)}</KeyCount>")
        xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter is not None:
            xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url_encode:
            xml.append("<EncodingType>url</EncodingType>")
        truncated = next_marker is not None or endless
        xml.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if endless:
            xml.append(f"<NextContinuationToken>{uuid.uuid4().hex}</NextContinuationToken>")
        elif next_marker is not None:
            next_token = base64.urlsafe_b64encode(next_marker.encode()).decode()
            xml.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        xml += contents
        xml += [f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>" for p in common]
        xml.append("</ListBucketResult>")
        body = "".join(xml).encode()
        headers = [
            *self._common_headers(),
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
        ]
        reply = _Reply(200, headers, body, delay=delay, faults=fired)
        self._body_faults(reply, "LIST", prefix)
        return reply

    def _listing_etag(self, key: str, stored: StoredObject, fired: list[FaultKind]) -> str:
        if self.faults.draw("listing_etag", "LIST", key) is not None:
            fired.append("listing_etag")
            return md5_hex(stored.data + b"listing")
        return self._faulted_etag("LIST", key, stored, fired)

    def _contents_xml(
        self,
        key_xml: str,
        etag: str,
        size: int,
        last_modified: float,
        generation: int,
        stored: StoredObject | None = None,
    ) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(last_modified))
        tail = (
            f"<Generation>{generation}</Generation><MetaGeneration>1</MetaGeneration>"
            if self.flavour == "gcs"
            else "<StorageClass>STANDARD</StorageClass>"
        )
        if self.flavour == "s3" and stored is not None and stored.checksum_algorithm:
            tail = (
                f"<ChecksumAlgorithm>{stored.checksum_algorithm}</ChecksumAlgorithm>"
                f"<ChecksumType>{stored.checksum_type}</ChecksumType>{tail}"
            )
        return (
            f"<Contents><Key>{key_xml}</Key><LastModified>{stamp}</LastModified>"
            f"<ETag>&quot;{_xml_text(etag)}&quot;</ETag><Size>{size}</Size>{tail}</Contents>"
        )

    # -- connection bookkeeping for the handler ------------------------------------------

    def _track(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self.accepted += 1
            self._connections.add(conn)
            return True

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _mark_reset(self, conn: socket.socket) -> None:
        with self._lock:
            self._reset_connections.add(conn)

    def _take_reset(self, conn: socket.socket) -> bool:
        with self._lock:
            if conn in self._reset_connections:
                self._reset_connections.discard(conn)
                return True
            return False


def _page(
    keys: list[str], prefix: str, marker: str, delimiter: str | None, max_keys: int
) -> tuple[list[str], list[str], str | None]:
    """One ListObjectsV2 page over sorted ``keys``: (object keys, common prefixes, the marker
    to continue after or None when nothing is left)."""
    i = bisect.bisect_left(keys, prefix)
    if marker:
        i = max(i, bisect.bisect_right(keys, marker))
    entries: list[str] = []
    common: list[str] = []
    last: str | None = None
    while i < len(keys) and keys[i].startswith(prefix):
        key = keys[i]
        if delimiter is not None:
            cut = key.find(delimiter, len(prefix))
            if cut != -1:
                group = key[: cut + len(delimiter)]
                if marker and group <= marker:
                    # a common prefix already returned on an earlier page
                    i = bisect.bisect_left(keys, group + "\U0010ffff")
                    continue
                if len(entries) + len(common) >= max_keys:
                    return entries, common, last
                common.append(group)
                last = group
                i = bisect.bisect_left(keys, group + "\U0010ffff")
                continue
        if len(entries) + len(common) >= max_keys:
            return entries, common, last
        entries.append(key)
        last = key
        i += 1
    return entries, common, None


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close, so no thread outlives a test
    block_on_close = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, owner: S3TestServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", owner.requested_port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.owner.tls is not None:
            # the handshake happens on the handler's thread, at its first read
            sock = self.owner.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        if self.owner._take_reset(request):
            # close() without shutdown(SHUT_WR): with SO_LINGER 0 the peer gets RST, not FIN
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_request(request)
            return
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away; nothing to learn
            return
        if exc is not None:
            self.owner.errors.append(exc)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        if not self.server.owner._track(self.connection):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is S3TestServer.requests()

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        owner._answering(+1)
        try:
            self._answer(owner)
        finally:
            owner._answering(-1)

    def _answer(self, owner: S3TestServer) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        if self.command not in ("GET", "HEAD"):
            # we never read request bodies, so this connection cannot be reused
            self.close_connection = True
        reply, recorded = owner._respond(self.command, self.path, headers)
        if reply.delay > 0 and owner._stopping.wait(reply.delay):
            self.close_connection = True
            owner._record(recorded)
            return
        head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"]
        head.append(f"Date: {formatdate(usegmt=True)}\r\n")
        head.append(f"Server: {'UploadServer' if owner.flavour == 'gcs' else 'AmazonS3'}\r\n")
        head += [f"{name}: {value}\r\n" for name, value in reply.headers]
        if not any(name.lower() == "content-length" for name, _ in reply.headers):
            head.append(f"Content-Length: {len(reply.body)}\r\n")
        if self.close_connection or reply.cut is not None:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        payload = "".join(head).encode("latin-1")
        if reply.cut is not None:
            self.close_connection = True
            payload += reply.body[: reply.cut_after]
            if reply.cut == "reset":
                owner._mark_reset(self.connection)
        elif reply.trickle:
            owner._record(recorded)
            self.wfile.write(payload)
            self.wfile.flush()
            for index in range(len(reply.body)):
                if owner._stopping.wait(reply.trickle):
                    self.close_connection = True
                    return
                self.wfile.write(reply.body[index : index + 1])
                self.wfile.flush()
            return
        else:
            payload += reply.body
        owner._record(recorded)
        self.wfile.write(payload)


def iter_hostile_keys(series_prefix: str) -> Iterator[str]:
    """Keys a hostile or broken listing could return for ``series_prefix`` (e.g. "<uuid>/"),
    for use with the ``list_extra`` fault. None of them is a safe local path."""
    yield "../x"
    yield f"{series_prefix}../../etc/passwd"
    yield f"{series_prefix}/abs.dcm"
    yield f"{series_prefix}sub/dir.dcm"
    yield f"{series_prefix}nul\x00.dcm"
    yield f"{series_prefix}ctl\x01\x1f.dcm"
    yield f"{series_prefix}new\nline.dcm"
    yield f"{series_prefix}back\\slash.dcm"
    yield f"{series_prefix}.."
    yield "/etc/passwd"


def main(argv: list[str] | None = None) -> None:
    """Serve IDC-like series until interrupted, e.g. for benchmarks in a separate process:
    ``python -m tests.support.s3server --selection qin_pet_phantom --port 9000``."""
    import argparse
    import signal

    from tests.support import dataset
    from tests.support.s3server import S3TestServer as Server  # not __main__'s copy

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--flavour", choices=get_args(Flavour), default="s3")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--selection", action="append", choices=sorted(dataset.SELECTIONS))
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Server(args.flavour, port=args.port) as server:
        for name in args.selection or ():
            uploaded = dataset.populate(server, dataset.selection(name))
            print(f"{name}: {len(uploaded)} objects", flush=True)
        print(server.endpoint, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
