"""Measure planning a large selection into the queue: wall time and peak RSS.

    .venv/bin/python benchmarks/plan_scale.py --collection nlst

Resolves the selection with the catalog and enqueues every series into a fresh SQLite
state in a temporary directory, exactly as `idc-sync sync` does before fetching."""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from idc_sync.config import load_settings
from idc_sync.core.planner import PlanTally, place_batch
from idc_sync.run.jobs import STATE_DB, resolved
from idc_sync.state.queue import Queue


async def plan_into_queue(collections: list[str], root: Path) -> tuple[PlanTally, float, int]:
    settings = load_settings(None, destination=root, collections=collections)
    started = time.perf_counter()
    queue = await Queue.open(root / STATE_DB)
    try:
        with resolved(settings) as (_catalog, resolution, layout):
            tally = PlanTally()
            await queue.begin_plan()
            for batch in resolution.batches():
                await queue.enqueue(place_batch(batch, layout, tally))
        elapsed = time.perf_counter() - started
        rows = await queue.count_selected()
    finally:
        await queue.close()
    return tally, elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", action="append", default=[])
    args = parser.parse_args()
    collections = args.collection or ["nlst"]
    with tempfile.TemporaryDirectory() as tmp:
        tally, elapsed, rows = asyncio.run(plan_into_queue(collections, Path(tmp)))
        size = (Path(tmp) / STATE_DB).stat().st_size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"collections: {', '.join(collections)}")
    print(
        f"series planned: {tally.series:,} ({rows:,} rows in the queue), "
        f"files {tally.files:,}, bytes {tally.bytes:,}"
    )
    print(f"wall time: {elapsed:.1f} s, peak RSS: {peak_mb:.0f} MB, state file {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
