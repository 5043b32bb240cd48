"""The one exception tree of idc-sync.

IdcSyncError
+-- ConfigurationError        bad config, manifest or selection: exit code 2, nothing touched
|   +-- ManifestError         a manifest line that cannot be read
|   +-- SelectionError        unknown collections / UIDs, bad SQL, nothing selected
|   +-- RetireRefused         the plan would retire more than max_retire_fraction of the mirror
|   +-- DestinationError      the state describes a mirror elsewhere, or it is not there
+-- StateError                the SQLite state is unreadable, locked or from a newer schema
+-- UnsafePathError           a template value or object key that would escape the mirror root
+-- RetryExhausted            (core/retry.py) no attempts left for one object or listing
+-- ReleaseCheckError         a look for a newer IDC release failed (the index unreachable or
|                             hostile, a wrong hash, an unusable wheel): the mirror stays on
|                             its release
+-- TransferError             one object (or listing) could not be fetched
    +-- RetryableError        5xx, SlowDown, 429, resets, timeouts, truncated bodies
    |   +-- ObjectChangedError  412 to If-Match: the object is not the one the listing named
    |   +-- StalledError      the body moved slower than the low-speed rule allows
    |   +-- ProtocolError     an answer that breaks HTTP or our bounds (malformed, header
    |                         block over 64 KiB)
    +-- IntegrityError        size or checksum mismatch
    +-- PermanentError        403, 404, a key not shaped <uuid>/<uuid>.dcm, an encoded body,
    |   |                     a redirect S3 semantics do not call for
    |   +-- ListingTooLong    a series listing goes on past what the index allows
    +-- LocalStorageError     our disk failed us (full, read-only, EIO, EACCES): stop the run
    +-- NetworkSetupError     the way to the buckets is misconfigured: stop, do not retry
    |   +-- TlsError          a certificate not trusted, a failed handshake
    |   +-- ProxyError        the proxy is down or refuses
    +-- BodyTooLarge          more bytes than the caller allows (the caller decides what it means)
    +-- Aborted               another range of the same object failed, or it was cancelled

IllegalMove                   a state change core/lifecycle.py forbids: a bug, never caught
"""

from __future__ import annotations

import errno

# errno values that mean "the local disk failed us" (full, over quota, read-only, an I/O
# error, no permission), as opposed to a bug in our paths: the run stops, it does not retry.
LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
)


class IdcSyncError(Exception):
    """Base of every error idc-sync raises on purpose."""


class ConfigurationError(IdcSyncError):
    """The user's input (config, flags, manifest, selection) is wrong; exit code 2."""


class ManifestError(ConfigurationError):
    """A manifest file or one of its lines cannot be understood."""

    def __init__(self, path: str, line_number: int | None, message: str) -> None:
        where = f"{path}:{line_number}" if line_number is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line_number = line_number


class SelectionError(ConfigurationError):
    """The selection names things the installed IDC release does not have, or its SQL fails."""


class RetireRefused(ConfigurationError):
    """The plan would retire more of the mirror than ``max_retire_fraction`` allows."""


class DestinationError(ConfigurationError):
    """The destination given is not the mirror the state describes (moved, not mounted)."""


class StateError(IdcSyncError):
    """The state directory or its SQLite database cannot be used."""


# The steps a check for a newer IDC release fails at (the metric's reason label): the
# package index page, the wheel's transfer, its SHA-256, its size, its contents.
RELEASE_CHECK_REASONS = ("index", "download", "hash", "size", "wheel")


class ReleaseCheckError(IdcSyncError):
    """Looking for, fetching or unpacking a newer idc-index-data failed; ``reason`` is one
    of RELEASE_CHECK_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[ReleaseCheckError], tuple[str, str]]:
        return (type(self), (self.reason, str(self)))


class UnsafePathError(IdcSyncError):
    """A path built from index values or object keys would not be a safe place to write."""


class TransferError(IdcSyncError):
    """Fetching one object or listing one series failed."""


class RetryableError(TransferError):
    """A transient failure: try again after a backoff."""


class ObjectChangedError(RetryableError):
    """The server refused our If-Match (412): the listing's ETag is stale or wrong, so the
    series is listed again before the next attempt."""


class IntegrityError(TransferError):
    """The bytes received do not match the expected size or checksum."""


class PermanentError(TransferError):
    """Trying again will not help (403, 404, a malformed key)."""


class LocalStorageError(TransferError):
    """Writing to the local file system failed (disk full, I/O error)."""


class StalledError(RetryableError):
    """An attempt whose bytes moved slower than ``low_speed_bytes_per_second`` for
    ``low_speed_seconds`` (curl's --speed-limit/--speed-time): abandoned, tried again."""


class ProtocolError(RetryableError):
    """The server's answer is not HTTP we can read, or goes past our bounds (a header block
    over 64 KiB): retried, since a proxy or a load balancer may be at fault."""


class ListingTooLong(PermanentError):
    """A series listing went on past what the index allows (more keys than the series'
    instanceCount plus slack, or more pages than that can take): the server is broken or
    hostile, and listing again would only loop again."""


class NetworkSetupError(TransferError):
    """Nothing can reach the buckets this way (an untrusted certificate, a proxy that is
    down or refuses): the run stops, as for a full disk, instead of retrying every series."""


class TlsError(NetworkSetupError):
    """A TLS handshake failed: the certificate is not trusted (see ``ca_bundle``) or the
    peer does not speak TLS as expected."""


class ProxyError(NetworkSetupError):
    """The proxy cannot be reached or refuses to carry the request."""


class BodyTooLarge(TransferError):
    """The server sends more bytes than the caller allows (``announced``: Content-Length,
    or None when the body simply kept coming)."""

    def __init__(self, limit: int, announced: int | None) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit
        self.announced = announced

    def __reduce__(self) -> tuple[type[BodyTooLarge], tuple[int, int | None]]:
        return (type(self), (self.limit, self.announced))


class Aborted(TransferError):
    """Another range of the same object failed, or the transfer was cancelled."""


class IllegalMove(Exception):
    """A state change core/lifecycle.py's tables do not allow. A bug, never an input error,
    so not an IdcSyncError: nothing may catch it as a failure of one object."""
