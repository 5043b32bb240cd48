"""One mirror's state, opened as a whole: the database and the queries each part of idc-sync
uses (the workers' queue, planning, retirement, reports, repairs, the mirror's own facts)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from idc_sync.state.database import Database
from idc_sync.state.meta import Meta
from idc_sync.state.plans import Plans
from idc_sync.state.queue import Queue
from idc_sync.state.repairs import Repairs
from idc_sync.state.reports import Reports
from idc_sync.state.retirement import Retirement

STATE_DB = "state.sqlite"


class State:
    """Use as ``async with await State.open(path) as state``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.queue = Queue(db)
        self.plans = Plans(db)
        self.retirement = Retirement(db)
        self.reports = Reports(db)
        self.repairs = Repairs(db)
        self.meta = Meta(db)

    @property
    def path(self) -> Path:
        return self.db.path

    @classmethod
    async def open(cls, path: Path, *, create: bool = True, cache_mib: int = 64) -> State:
        return cls(await Database.open(path, create=create, cache_mib=cache_mib))

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> State:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
