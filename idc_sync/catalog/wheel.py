"""A downloaded idc-index-data wheel made into a catalog directory, and the clean-up of the
catalogs kept. Only the parquet files of the package are copied out of the zip: nothing is
installed into the environment, nothing of the wheel is imported or run.

The wheel is untrusted input even after its hash matched (the index may be hostile): the
files are bounded in size while they are written, not by what the zip declares; members
are written under names of our own (no path of the zip is ever joined onto ours); the
result is opened as a Catalog (DuckDB reads every table, its release must be the wheel's)
before it counts. It is unpacked beside its final place under a dot name and renamed
there in one step, so a directory under ``catalogs/`` is always whole. Blocking file I/O:
callers run it on a thread."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from idc_sync.catalog.index import Catalog
from idc_sync.catalog.package_index import version_key
from idc_sync.catalog.sources import MARKER, PACKAGE, CatalogSource, directory, table_name
from idc_sync.core.errors import ConfigurationError, ReleaseCheckError
from idc_sync.disk.storage import fsync_directory

log = logging.getLogger(__name__)

# What a plan needs of a catalog; the other tables are bundled for users' SQL.
REQUIRED = ("index", "prior_versions_index", "version_metadata_index")
# How many whole catalogs stay: the one in use and the one before it.
KEEP = 2
_CHUNK = 1 << 20


def _copy_bounded(source: IO[bytes], target: IO[bytes], budget: int, name: str) -> int:
    """Copy until the end, at most ``budget`` bytes; returns how many were copied."""
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        if copied > budget:
            raise ReleaseCheckError("size", f"{name} unpacks to more than the bytes allowed")
        target.write(chunk)
    return copied


def _members(archive: zipfile.ZipFile, wheel: Path) -> dict[str, zipfile.ZipInfo]:
    """The package's parquet files by table name; a wheel naming one twice is refused."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        folder, _, filename = info.filename.rpartition("/")
        name = table_name(filename)
        if folder != PACKAGE or name is None or info.is_dir():
            continue
        if name in found:
            raise ReleaseCheckError("wheel", f"{wheel.name} holds {info.filename} twice")
        found[name] = info
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise ReleaseCheckError(
            "wheel", f"{wheel.name} is not an idc-index-data catalog: no {', '.join(missing)}"
        )
    return found


def _extract(wheel: Path, target: Path, max_bytes: int) -> None:
    budget = max_bytes
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name, info in sorted(_members(archive, wheel).items()):
                if info.file_size > budget:
                    raise ReleaseCheckError(
                        "size", f"{wheel.name}: {info.filename} is larger than the bytes allowed"
                    )
                filename = "idc_index.parquet" if name == "index" else f"{name}.parquet"
                with archive.open(info) as member, (target / filename).open("xb") as out:
                    budget -= _copy_bounded(member, out, budget, wheel.name)
                    out.flush()
                    os.fsync(out.fileno())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        # a broken archive, a bad CRC, a compression method zipfile lacks
        raise ReleaseCheckError("wheel", f"{wheel.name} is not a readable wheel: {error}") from None


def unpack(
    wheel: Path, version: str, catalogs: Path, *, max_bytes: int, provenance: Mapping[str, str]
) -> CatalogSource:
    """Make ``catalogs/<version>/`` from the wheel and return it; ``provenance`` (file name,
    URL, SHA-256) goes into its marker. ReleaseCheckError for a wheel that is not a usable
    catalog; nothing is left behind then."""
    key = version_key(version)
    if key is None:
        raise ReleaseCheckError("wheel", f"not a release version: {version!r}")
    final = catalogs / version
    if (final / MARKER).is_file():
        return directory(final)
    temp = catalogs / f".unpack-{version}"
    shutil.rmtree(temp, ignore_errors=True)  # left by an unpack that was killed
    temp.mkdir(parents=True)
    try:
        _extract(wheel, temp, max_bytes)
        marker = {"version": version, **provenance, "unpacked_at": time.time()}
        (temp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        try:
            with Catalog(source=directory(temp)) as opened:
                release = opened.release
        except ConfigurationError as error:
            raise ReleaseCheckError("wheel", f"{wheel.name}: {error}") from None
        if release != key[0]:
            raise ReleaseCheckError("wheel", f"{wheel.name} describes IDC release {release}")
        fsync_directory(temp)
        shutil.rmtree(final, ignore_errors=True)  # a directory without its marker: not whole
        temp.rename(final)
        fsync_directory(catalogs)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return directory(final)


def prune(catalogs: Path, keep: int = KEEP) -> list[Path]:
    """Remove all but the ``keep`` newest whole catalogs, and whatever an interrupted
    download or unpack left; returns what was removed."""
    if not catalogs.is_dir():
        return []
    whole: list[tuple[tuple[int, ...], Path]] = []
    removed: list[Path] = []
    for child in catalogs.iterdir():
        key = version_key(child.name)
        if child.is_dir() and key is not None and (child / MARKER).is_file():
            whole.append((key, child))
        else:
            removed.append(child)
    whole.sort(reverse=True)
    older = [path for _, path in whole[keep:]]
    for path in removed + older:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        why = "an older catalog" if path in older else "left by an interrupted download"
        log.info("removed %s (%s)", path, why)
    return removed + older
