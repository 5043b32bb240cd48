"""A real headless browser for tests of the status page: Debian's Chromium, one fresh
profile per run, no network but the URL it is given. ``dump_dom`` is the page as the
browser built it, ``screenshot`` a PNG of it, ``keep_loading`` leaves the page open (on a
virtual clock, so its own refresh comes at once) until the caller has seen enough."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from tests.support.tools import require

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)  # fmt: skip


def chromium() -> str:
    return require("chromium", "chromium-browser", package="chromium")


def _run(arguments: list[str], timeout: float = 90) -> str:
    with tempfile.TemporaryDirectory(prefix="idc-sync-chromium-") as profile:
        argv = [chromium(), *FLAGS, f"--user-data-dir={profile}", *arguments]
        # its own process group: the launcher is a shell script, and a timeout must end
        # the browser's processes too, not only the script
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)  # fmt: skip
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    assert process.returncode == 0, err[-3000:]
    return out


def dump_dom(url: str) -> str:
    """The DOM after the page loaded, serialized (what the browser shows, as HTML)."""
    return _run(["--dump-dom", url])


def screenshot(url: str, path: Path, width: int = 1280, height: int = 900) -> Path:
    _run([f"--screenshot={path}", f"--window-size={width},{height}", url])
    assert path.stat().st_size > 0
    return path


def keep_loading(url: str, until: Callable[[], bool], timeout: float = 60) -> None:
    """Keep the page open until ``until()`` holds. Virtual time runs as fast as the page
    lets it, so timers and refreshes fire at once (Chromium starts a new budget for every
    navigation: with a refreshing page it never ends by itself, hence the kill)."""
    with tempfile.TemporaryDirectory(prefix="idc-sync-chromium-") as profile:
        argv = [chromium(), *FLAGS, f"--user-data-dir={profile}",
                "--virtual-time-budget=600000", "--dump-dom", url]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, "the condition never held"
                assert process.poll() is None, f"chromium exited with {process.returncode}"
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}  # fmt: skip


class Page(HTMLParser):
    """What a person reads on a page, by element: the text of every element with an id,
    of every table row's cells (by row) and of every ``tr[data-collection]``'s cells (by
    the cell's class)."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.collections: dict[str, dict[str, str]] = {}
        self.title = ""
        self._stack: list[tuple[str, dict[str, str], list[str]]] = []
        self._cells: list[str] = []
        self._table: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        attributes = {name: value or "" for name, value in attrs}
        if tag == "table" and "id" in attributes:
            self._table = attributes["id"]
            self.tables[self._table] = []
        if tag == "tr":
            self._cells = []
        self._stack.append((tag, attributes, []))

    def handle_data(self, data: str) -> None:
        for _, _, text in self._stack:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or not self._stack:
            return
        while self._stack:
            open_tag, attributes, parts = self._stack.pop()
            text = " ".join("".join(parts).split())
            if "id" in attributes:
                self.by_id[attributes["id"]] = text
            if open_tag == "title":
                self.title = text
            if open_tag in ("td", "th"):
                self._cells.append(text)
                if self._stack and "data-collection" in self._stack[-1][1]:
                    row = self.collections.setdefault(self._stack[-1][1]["data-collection"], {})
                    row[(attributes.get("class") or "cell").split()[0]] = text
            if open_tag == "tr" and self._table is not None:
                self.tables[self._table].append(self._cells)
            if open_tag == "table":
                self._table = None
            if open_tag == tag:
                break
