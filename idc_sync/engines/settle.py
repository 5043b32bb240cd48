"""The last step of every engine: judge the bytes of a filled temp file against what the
listing promised and rename them into place only when they verify. Blocking."""

from __future__ import annotations

import errno

from idc_sync.core.errors import IntegrityError, LocalStorageError, RetryableError
from idc_sync.core.hashing import Digests
from idc_sync.core.verify import Published, Verdict, verdict
from idc_sync.disk.storage import TempFile
from idc_sync.engines.base import FetchJob


def settle(temp: TempFile, job: FetchJob, digests: Digests, published: Published | None) -> Verdict:
    """Judge the bytes in ``temp``; rename them into place only when they verify. Blocking.

    A mismatch discards the temp file and raises IntegrityError. An EIO at fsync discards
    it too and raises RetryableError: one bad write is not a full disk, so the object is
    fetched again instead of stopping the run."""
    result = verdict(job.expected, digests, published, job.checksum)
    if not result.ok:
        temp.discard()
        raise IntegrityError(result.reason or "checksum mismatch")
    try:
        temp.commit()
    except LocalStorageError as error:
        if getattr(error.__cause__, "errno", None) != errno.EIO:
            raise
        raise RetryableError(f"{error}; fetching the file again") from error
    return result
