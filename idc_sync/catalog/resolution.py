"""A resolved selection: what the release lacks, what identifiers were recognised as, how
big it is, and its series as a stream of SeriesRecords in batches."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from idc_sync.core.model import SeriesRecord, UnknownSelection


class Resolution:
    """A resolved selection: what is unknown, what identifiers were recognised as, how big it
    is, and its series as a stream.

    ``total_instances`` counts the named instances of a series selected by instance, and
    ``total_bytes`` leaves out such series and series known only from prior_versions_index,
    whose sizes are not exact. Batches come in no particular order. ``recognised`` lists
    (part, value, origin) for each identifier, as the mirror's selection keeps it.
    """

    def __init__(
        self,
        cursor: Any,
        query: str,
        layout_columns: tuple[str, ...],
        batch_size: int,
        unknown: list[UnknownSelection],
        recognised: list[tuple[str, str, str]],
    ) -> None:
        self._cursor = cursor
        self._query = query
        self._layout_columns = layout_columns
        self._batch_size = batch_size
        self._streaming = False
        self.unknown = unknown
        self.recognised = recognised
        row = cursor.execute(
            f"""
            SELECT
                count(*),
                coalesce(sum(CASE WHEN instances IS NULL THEN instance_count
                                  ELSE len(instances) END), 0),
                coalesce(sum(CASE WHEN instances IS NULL THEN series_size_bytes END), 0)
            FROM ({query}) AS selected
            """
        ).fetchone()
        self.series_count = int(row[0])
        self.total_instances = int(row[1])
        self.total_bytes = int(row[2])

    def batches(self) -> Generator[list[SeriesRecord], None, None]:
        """Every selected series exactly once, at most ``batch_size`` per list.

        Each call starts the stream over; one stream at a time per Resolution.
        """
        if self._streaming:
            raise RuntimeError("a stream of this Resolution is open; finish or close it first")
        self._streaming = True
        try:
            result = self._cursor.execute(self._query)
            while rows := result.fetchmany(self._batch_size):
                yield [self._record(row) for row in rows]
        finally:
            self._streaming = False

    def _record(self, row: tuple[Any, ...]) -> SeriesRecord:
        instances = row[9]
        return SeriesRecord(
            crdc_series_uuid=row[0],
            SeriesInstanceUID=row[1],
            collection_id=row[2],
            aws_bucket=row[3],
            license_short_name=row[4],
            source_DOI=row[5],
            instance_count=row[6],
            series_size_bytes=row[7],
            idc_version=row[8],
            layout_values=dict(zip(self._layout_columns, row[10:], strict=True)),
            instances=None if instances is None else frozenset(instances),
        )

    def close(self) -> None:
        self._cursor.close()

    def __enter__(self) -> Resolution:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
