"""One worker process of a round (``python -m idc_sync.run.worker``, started by run/pool.py):
its own event loop, transfer engines and state connection, leasing series from the same
SQLite queue as its parent and every other worker. It never plans, retires or writes the
provenance manifest; it reports over its standard output (run/channel.py).

It is usually started before the parent has planned (run/pool.py's Prestarted): it
imports its modules, then waits for its first input line, the round's settings and this
worker's share of them; it opens its engines and says ``ready``, then waits for ``go``. So
its start-up overlaps the parent's, and a worker the round does not need is stopped
before it was told anything. SIGTERM, or the parent going away (end of input), cancels what is in
flight: a cancelled file never reaches its final name, and the parent queues the series
again."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
import threading

import uvloop

from idc_sync.config import Settings
from idc_sync.core.logs import LOGGER
from idc_sync.engines.base import Engine
from idc_sync.engines.metered import MeteredEngine
from idc_sync.run.channel import FLUSH_SECONDS, ForwardingHandler, Outbox, summary_message
from idc_sync.run.mirror import Mirror
from idc_sync.run.objects import RunSummary
from idc_sync.run.round import mirror_options, open_engine, open_failover_engine
from idc_sync.state.store import STATE_DB, State

PR_SET_PDEATHSIG = 1
# How long a worker told to stop may take to record what it placed (the parent waits as long).
STOP_SECONDS = 10.0


class _Orders:
    """What the parent said so far."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.meter = False
        self.mirror: Mirror | None = None
        self.pending: list[tuple[str, str]] = []  # drain/stop before the mirror existed

    def tell(self, what: str, reason: str) -> None:
        if self.mirror is None:
            self.pending.append((what, reason))
        elif what == "drain":
            self.mirror.drain(reason)
        else:
            self.mirror.stop(reason)


async def _commands(orders: _Orders, early: bytes) -> None:
    """Obey the parent's lines until its end of input, which cancels the round. ``early``:
    what arrived with the first line (the parent may say ``go`` before we listen)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    reader.feed_data(early)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        message = json.loads(line)
        if "go" in message:
            orders.meter = bool(message.get("meter"))
            orders.go.set()
        for what in ("drain", "stop"):
            if what in message:
                orders.tell(what, str(message[what]))
                orders.go.set()
    # end of input: the parent is gone, and work() cancels the round


async def _flushing(outbox: Outbox) -> None:
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        outbox.flush()


async def work(settings: Settings, outbox: Outbox, early: bytes = b"") -> None:
    # run/round.py starts workers through run/pool.py: imported here, the cycle stays open

    orders = _Orders()
    commands = asyncio.create_task(_commands(orders, early))
    flushing = asyncio.create_task(_flushing(outbox))
    running: asyncio.Task[None] | None = None
    try:
        async with open_engine(settings) as engine, open_failover_engine(settings) as other:
            # the engines are open: now wait (the parent plans meanwhile), then mirror
            running = asyncio.create_task(_mirror(settings, orders, outbox, engine, other))
            done, _ = await asyncio.wait({running, commands}, return_when=asyncio.FIRST_COMPLETED)
            if commands in done and not running.done():
                _deadline()  # the parent is gone: finish what is in flight, or be killed
                running.cancel()
            await running
    finally:
        for task in (commands, flushing):
            task.cancel()
        await asyncio.gather(commands, flushing, return_exceptions=True)
        if running is not None and not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        # what was placed and recorded counts, even when the round was cancelled
        summary = orders.mirror.summary if orders.mirror is not None else RunSummary()
        outbox.send(summary_message(summary))


async def _mirror(
    settings: Settings, orders: _Orders, outbox: Outbox, engine: Engine, other: Engine | None
) -> None:
    await orders.go.wait()

    def wrap(found: Engine) -> Engine:
        return MeteredEngine(found, outbox) if orders.meter else found

    # a worker leases and records, it never plans: a small page cache will do
    async with await State.open(settings.state_path / STATE_DB, create=False, cache_mib=8) as state:
        mirror = Mirror(
            state.queue, wrap(engine), mirror_options(settings), outbox, observer=outbox,
            failover=None if other is None else wrap(other),
            stopped=lambda reason: outbox.send({"stopped": reason}),
        )  # fmt: skip
        orders.mirror = mirror
        for what, reason in orders.pending:
            orders.tell(what, reason)
        outbox.send({"ready": mirror.owner})
        await mirror.run()


def _die_with_the_parent() -> None:
    """SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG): a killed sync leaves no
    worker mirroring behind it; end of input tells the same, later, elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _first_line() -> tuple[bytes, bytes]:
    """The first input line, read without a buffer that would keep what follows it; and
    what followed it in the same reads."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            raise SystemExit("idc-sync worker: no settings on standard input")
        data += chunk
    line, _, early = data.partition(b"\n")
    return line, early


def main() -> None:
    parent = os.getppid()
    _die_with_the_parent()
    if os.getppid() != parent:  # the parent died before we asked
        return
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but the channel may write to the parent's pipe
    outbox = Outbox(out)
    line, early = _first_line()
    first = json.loads(line)
    settings = Settings(**first["settings"])
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [ForwardingHandler(outbox)]
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    gc.freeze()  # as the CLI does: what is loaded now lives as long as the process

    code = 0
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        main_task = loop.create_task(work(settings, outbox, early))
        cancelled = False

        def cancel() -> None:
            # once: a second cancel could cut short the closing of the state connection
            nonlocal cancelled
            if not cancelled:
                cancelled = True
                main_task.cancel()
                _deadline()

        loop.add_signal_handler(signal.SIGTERM, cancel)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides on Ctrl-C
        try:
            runner.run(_awaited(main_task))
        except asyncio.CancelledError:
            pass
        except BaseException:
            logging.getLogger(__name__).exception("worker process failed")
            code = 1
    with contextlib.suppress(OSError, ValueError):
        outbox.flush()
        sys.stderr.flush()
    # Threads that are not daemons (aiosqlite's) must never keep a finished worker alive,
    # and a dead process holds no SQLite lock: exit now.
    os._exit(code)


async def _awaited(task: asyncio.Task[None]) -> None:
    await task


def _deadline() -> None:
    """A worker told to stop is gone within STOP_SECONDS, whatever it is waiting for."""
    timer = threading.Timer(STOP_SECONDS, os._exit, (1,))
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    main()
