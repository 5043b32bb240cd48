"""The local file system side of a fetch: temp files next to their final name, fsync,
atomic rename, directory fsync, and cleanup of temp files a killed run left behind.

Everything here is blocking; callers run it in a worker thread."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from idc_sync.core.errors import LOCAL_ERRNOS, LocalStorageError

TEMP_PREFIX = ".idc-sync-"
TEMP_SUFFIX = ".partial"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_path_for(final: Path) -> Path:
    """A fresh temp name in the final file's directory, so the rename never crosses devices.
    The suffix only has to be unlikely to repeat (creation uses O_EXCL), not unguessable, so
    it comes from ``random`` rather than a getrandom() call per file."""
    return final.with_name(f"{TEMP_PREFIX}{final.name}.{random.getrandbits(32):08x}{TEMP_SUFFIX}")


def remove_stale_temps(*finals: Path) -> None:
    """Remove the temp files of the ``finals`` that a run killed while writing them left
    beside them: for files a run rewrites whole under the state's lock (the provenance
    manifest, the mirror's marker) and files a retirement copies into the retired tree, none
    of which a directory survey visits. One directory listing per directory. Blocking."""
    by_directory: dict[Path, set[str]] = {}
    for final in finals:
        by_directory.setdefault(final.parent, set()).add(final.name)
    for directory, names in by_directory.items():
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # nothing to clean, or nothing we may list: the write itself decides
        for entry in entries:
            if not is_temp_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            # TEMP_PREFIX + final name + "." + token + TEMP_SUFFIX (temp_path_for)
            name, dot, token = entry.name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)].rpartition(".")
            if dot and token and name in names:
                Path(entry.path).unlink(missing_ok=True)


def local_error(error: OSError, what: str, path: Path) -> LocalStorageError | OSError:
    """Turn disk-level failures into LocalStorageError; leave other OSErrors alone."""
    if error.errno in LOCAL_ERRNOS:
        reason = os.strerror(error.errno) if error.errno is not None else str(error)
        return LocalStorageError(f"{what} {path}: {reason}")
    return error


class TempFile:
    """A temp file being filled with one object's bytes, written with positional writes."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = temp_path_for(final)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                self._fd: int | None = os.open(self.path, flags, 0o644)
            except FileNotFoundError:
                # the first file of a series creates its directory
                final.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            raise local_error(error, "cannot create", self.path) from error

    @classmethod
    def adopt(cls, final: Path, path: Path) -> TempFile:
        """A temp file another program (s5cmd) filled at ``path``, to commit or discard."""
        temp = cls.__new__(cls)
        temp.final = final
        temp.path = path
        try:
            # fsync needs a descriptor, not write access
            temp._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise local_error(error, "cannot open", path) from error
        return temp

    def write_at(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as error:
            raise local_error(error, "cannot write", self.path) from error

    def read_into(self, buffer: memoryview, offset: int) -> int:
        """Read back bytes written earlier (hashing a file filled out of order)."""
        assert self._fd is not None
        try:
            return os.preadv(self._fd, [buffer], offset)
        except OSError as error:
            raise local_error(error, "cannot read back", self.path) from error

    def commit(self) -> None:
        """fsync the data, then rename into place. The caller fsyncs the directory before
        recording the file as done (several renames share one directory fsync)."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as error:
            # After a failed fsync the page cache may hold bytes that never reach the disk:
            # the only safe answer is to discard this copy and fetch again.
            self.discard()
            raise local_error(error, "cannot fsync", self.path) from error
        os.close(self._fd)
        self._fd = None
        try:
            self.path.replace(self.final)
        except OSError as error:
            self.discard()
            raise local_error(error, "cannot rename into place", self.final) from error

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise local_error(error, "cannot fsync directory", directory) from error


@dataclass(frozen=True, slots=True)
class DirectorySurvey:
    files: frozenset[str]  # names of regular files (not temp files, not symlinks)
    removed_temp_files: int


def survey_directory(directory: Path) -> DirectorySurvey:
    """Remove temp files a killed run left in ``directory`` and name the regular files
    that are there; an absent directory is an empty survey."""
    files: set[str] = set()
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return DirectorySurvey(frozenset(), 0)
    except OSError as error:
        raise local_error(error, "cannot read directory", directory) from error
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        if is_temp_name(entry.name):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
        else:
            files.add(entry.name)
    return DirectorySurvey(frozenset(files), removed)
