"""Where the tables of an IDC release are, and which release a plan uses.

Three kinds of catalog: the installed idc-index-data, found through its distribution
metadata afresh at every call (after a ``pip install`` under a running daemon the module
imported at start still names the old version, while the files on disk are the new
release's); a catalog directory, a release followed from a package index and unpacked into
``<state_dir>/catalogs/<version>/`` by catalog/wheel.py; and index files given by hand. A
plan uses the newest of the installed and the followed ones (``newest``), so a mirror never
goes back to an older release by itself."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from idc_sync.catalog.package_index import version_key
from idc_sync.core.errors import ConfigurationError

log = logging.getLogger(__name__)

DISTRIBUTION = "idc-index-data"
PACKAGE = "idc_index_data"  # the folder of the distribution's files
CATALOGS_DIR = "catalogs"  # under the state directory
MARKER = "catalog.json"  # written last into a catalog directory: what it was unpacked from

INSTALLED, FOLLOWED, FILES = "installed", "followed", "files"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def table_name(filename: str) -> str | None:
    """The table a parquet file of idc-index-data holds (``idc_index.parquet`` is the
    ``index`` users query), or None for a file that is not one."""
    if not filename.endswith(".parquet"):
        return None
    stem = filename[: -len(".parquet")]
    name = "index" if stem == "idc_index" else stem
    return name if _IDENTIFIER.fullmatch(name) else None


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """One catalog: its tables (``index`` and ``prior_versions_index`` at least, by table
    name), the idc-index-data version that shipped them (None for hand-given files), and
    where it lives."""

    origin: str  # INSTALLED, FOLLOWED or FILES
    location: Path
    tables: Mapping[str, Path]
    version: str | None = None

    @property
    def key(self) -> tuple[int, ...]:
        """Newer catalogs sort higher; hand-given files lowest."""
        return (version_key(self.version) or ()) if self.version is not None else ()

    def describe(self) -> str:
        if self.version is None:
            return f"index files in {self.location}"
        return f"idc-index-data {self.version} ({self.origin}, {self.location})"


def installed() -> CatalogSource:
    """The installed idc-index-data as its metadata on disk says now."""
    # a distribution installed since the last look is found only once the finders forget
    # what they cached about the folders on sys.path
    importlib.invalidate_caches()
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigurationError(
            "idc-index-data is not installed: pip install idc-index (or follow_releases = true)"
        ) from None
    tables: dict[str, Path] = {}
    for file in distribution.files or ():
        name = table_name(file.name)
        if file.parent.as_posix() == PACKAGE and name is not None:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                tables.setdefault(name, path)
    version = str(distribution.version)
    if "index" not in tables or "prior_versions_index" not in tables:
        raise ConfigurationError(
            f"idc-index-data {version} ships no idc_index.parquet and prior_versions_index."
            "parquet: reinstall it"
        )
    return CatalogSource(INSTALLED, tables["index"].parent, tables, version)


def directory(path: Path) -> CatalogSource:
    """A catalog directory: its parquet files and the marker that names their version."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigurationError(f"catalog {path} has no readable {MARKER}: {error}") from None
    version = marker.get("version") if isinstance(marker, dict) else None
    if not isinstance(version, str) or version_key(version) is None:
        raise ConfigurationError(f"catalog {path}: {MARKER} names no idc-index-data version")
    tables = {}
    for file in sorted(path.glob("*.parquet")):
        name = table_name(file.name)
        if name is not None:
            tables[name] = file
    return CatalogSource(FOLLOWED, path, tables, version)


def index_files(index: Path, prior_versions: Path) -> CatalogSource:
    """Index files given by hand; a ``version_metadata_index.parquet`` beside the index
    tells their release."""
    tables = {"index": index, "prior_versions_index": prior_versions}
    metadata = index.with_name("version_metadata_index.parquet")
    if metadata.is_file():
        tables["version_metadata_index"] = metadata
    return CatalogSource(FILES, index.parent, tables)


def followed(state_dir: Path) -> list[CatalogSource]:
    """The whole catalog directories under ``state_dir``, newest first. Half-made ones
    (a name starting with a dot: an unpack in progress or interrupted) are not looked at."""
    root = state_dir / CATALOGS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            found.append(directory(child))
        except ConfigurationError as error:
            log.warning("ignoring %s", error)
    return sorted(found, key=lambda source: source.key, reverse=True)


def newest(state_dir: Path | None) -> CatalogSource:
    """The catalog a plan uses: the newest of the installed idc-index-data and the
    releases followed into ``state_dir``; the installed one when they are the same version
    (it bundles every table idc-index users know)."""
    candidates = followed(state_dir) if state_dir is not None else []
    try:
        candidates.insert(0, installed())
    except ConfigurationError:
        if not candidates:
            raise
    return max(candidates, key=lambda source: source.key)  # the first of equals: installed
