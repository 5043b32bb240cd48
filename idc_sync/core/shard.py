"""Scale-out without coordination: ``--shard K/N`` gives each of N hosts the series whose
crdc_series_uuid hashes to K, so N independent mirrors split one selection exactly once.
Pure: the hash depends only on the UUID, never on the release, the order or the host."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from idc_sync.core.model import SeriesRecord

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")

# Far above any realistic host count; bounds the spec so a typo cannot select nothing.
MAX_SHARDS = 100_000


def shard_of(crdc_series_uuid: str, count: int) -> int:
    """The shard (0 .. count-1) a series belongs to.

    SHA-1 of the lower-case UUID text, first 8 bytes big-endian, modulo ``count``: easy to
    reproduce in any language (`python -c`, SQL, a shell pipe) when an operator wants to
    know which host holds a series, and spread evenly whatever the UUIDs look like."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    digest = hashlib.sha1(crdc_series_uuid.strip().lower().encode(), usedforsecurity=False)
    return int.from_bytes(digest.digest()[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; indexes start at 0, like Kubernetes' completion index
    and a Slurm array declared ``--array=0-(N-1)``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"shard count must be 1..{MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be 0..{self.count - 1} for {self.count} shards, "
                f"got {self.index} (indexes start at 0)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"``, e.g. ``"0/4"`` .. ``"3/4"``."""
        match = _SPEC.match(text)
        if match is None:
            raise ValueError(f"shard must look like K/N (e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def includes(self, crdc_series_uuid: str) -> bool:
        return shard_of(crdc_series_uuid, self.count) == self.index


def select(records: Iterable[SeriesRecord], shard: Shard | None) -> list[SeriesRecord]:
    """The series of ``shard`` (all of them without a shard)."""
    if shard is None:
        return list(records)
    return [record for record in records if shard.includes(record.crdc_series_uuid)]
