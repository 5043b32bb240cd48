"""Where a series and its instance files go under the mirror root: the idc-index
``dirTemplate`` language, value-to-path-component sanitizing, object-key parsing and
the one symlink-aware join that every write path goes through."""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from idc_sync.core.errors import ConfigurationError, UnsafePathError

# idc-index's IDCClient.DOWNLOAD_HIERARCHY_DEFAULT, so that `idc download` trees and ours agree.
DEFAULT_TEMPLATE = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"

# What a None (or missing, empty or NaN) value renders as. idc-index's DuckDB CONCAT would
# render NULL as "", which silently collapses a whole-segment value into its parent
# directory; a visible word keeps the tree's depth fixed. A real value "_missing_" would
# share the directory, which is harmless: instance file names are globally unique.
MISSING_VALUE = "_missing_"

# Linux NAME_MAX, counted in bytes of the UTF-8 encoding.
NAME_MAX_BYTES = 255

_UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(_UUID_PATTERN)
_INSTANCE_FILE_RE = re.compile(rf"({_UUID_PATTERN})\.dcm")

# The rest of a bad `%token`, for error messages only.
_TOKEN_TAIL_RE = re.compile(r"[A-Za-z0-9_]*")

# Hex digits of SHA-256 kept when a component is shortened: 64 bits keeps distinct long
# names apart in any realistic mirror.
_DIGEST_HEX_CHARS = 16


def _is_unsafe_char(char: str) -> bool:
    """True for characters that never appear literally in a path component we write.

    '/' and NUL cannot be in a POSIX file name; '\\' is a separator to Windows tools and
    Samba clients; C0, DEL and C1 controls break terminals, logs and manifests; lone
    surrogates cannot be encoded to UTF-8 for the OS at all. '%' is escaped so that the
    escaping stays reversible (distinct values give distinct components).
    """
    code = ord(char)
    return char in "/\\%" or code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


# The same characters as _is_unsafe_char, for one C-speed scan per value: rendering runs
# once per series, and a plan can hold a million of them.
_UNSAFE_RE = re.compile(r"[/\\%\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _percent_encode(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def _escape_value(text: str) -> str:
    """Percent-encode the unsafe characters of one value; everything else stays verbatim."""
    if _UNSAFE_RE.search(text) is None:
        return text
    return _UNSAFE_RE.sub(_percent_encode, text)


def _value_text(value: object) -> str:
    """The text of one index value, before escaping."""
    if value is None:
        return MISSING_VALUE
    # A pandas-built row carries NaN where the index has NULL.
    if isinstance(value, float) and math.isnan(value):
        return MISSING_VALUE
    text = value if isinstance(value, str) else str(value)
    return text if text else MISSING_VALUE


def _fit_component(component: str) -> str:
    """Make a rendered segment a single safe directory name.

    "." and ".." are spelled with escaped dots (still reversible: a literal '%' in a value
    is always escaped). Names over NAME_MAX are cut at a character boundary and given a
    digest of the full name, so two long names that share a prefix stay apart.
    """
    if component in (".", ".."):
        component = "%2E" * len(component)
    encoded = component.encode("utf-8")
    if len(encoded) <= NAME_MAX_BYTES:
        return component
    digest = hashlib.sha256(encoded).hexdigest()[:_DIGEST_HEX_CHARS]
    suffix = f"~{digest}"
    budget = NAME_MAX_BYTES - len(suffix)
    head = encoded[:budget].decode("utf-8", "ignore")
    return head + suffix


@dataclass(frozen=True, slots=True)
class _Segment:
    """One '/'-separated part of a template: literal text and column names, alternating.

    ``parts[0]``, ``parts[2]``, ... are literals (possibly empty); ``parts[1]``,
    ``parts[3]``, ... are column names.
    """

    parts: tuple[str, ...]


def _bad_literal_char(literal: str) -> str | None:
    # Literals never hold '%' (each one starts a column token), so this only finds
    # separators, controls and surrogates.
    return next((char for char in literal if _is_unsafe_char(char)), None)


def _parse_segment(segment: str, template: str, columns_longest_first: tuple[str, ...]) -> _Segment:
    parts: list[str] = []
    literal_start = 0
    position = 0
    while True:
        percent = segment.find("%", position)
        if percent < 0:
            break
        # Longest match, because '_' is both an identifier character and the usual
        # separator: "%Modality_%SeriesInstanceUID" must not look for a column "Modality_".
        name = next(
            (column for column in columns_longest_first if segment.startswith(column, percent + 1)),
            None,
        )
        if name is None:
            tail = _TOKEN_TAIL_RE.match(segment, percent + 1)
            bad = "%" + (tail.group() if tail else "")
            hint = difflib.get_close_matches(bad[1:], columns_longest_first, n=1)
            did_you_mean = f"; did you mean %{hint[0]}?" if hint else ""
            raise ConfigurationError(
                f"layout template {template!r}: {bad!r} does not name a known index "
                f"column{did_you_mean}"
            )
        parts.append(segment[literal_start:percent])
        parts.append(name)
        position = percent + 1 + len(name)
        literal_start = position
    parts.append(segment[literal_start:])
    for literal in parts[0::2]:
        bad_char = _bad_literal_char(literal)
        if bad_char is not None:
            raise ConfigurationError(
                f"layout template {template!r}: character {bad_char!r} is not allowed in a path"
            )
    return _Segment(tuple(parts))


@lru_cache(maxsize=64)
def _parse_template(template: str, known_columns: frozenset[str]) -> tuple[_Segment, ...]:
    """Parse once per (template, columns); rendering runs once per series, a million times."""
    if template == "":
        return ()
    if template.startswith("/"):
        raise ConfigurationError(
            f"layout template {template!r} is absolute; it must be relative to the mirror root"
        )
    columns_longest_first = tuple(
        sorted((column for column in known_columns if column), key=lambda c: (-len(c), c))
    )
    segments: list[_Segment] = []
    for segment in template.split("/"):
        if segment == "":
            raise ConfigurationError(
                f"layout template {template!r} has an empty path segment ('//' or a trailing '/')"
            )
        if segment in (".", ".."):
            raise ConfigurationError(
                f"layout template {template!r} has a {segment!r} segment; every segment must "
                "name a directory"
            )
        segments.append(_parse_segment(segment, template, columns_longest_first))
    return tuple(segments)


def template_columns(template: str, known_columns: Collection[str]) -> tuple[str, ...]:
    """The index columns ``template`` uses, in order of first use, without repeats.

    ``""`` means a flat layout and uses no column. Raises ConfigurationError for unknown
    ``%`` tokens, absolute templates, and empty, ``.`` or ``..`` segments.
    """
    seen: dict[str, None] = {}
    for segment in _parse_template(template, frozenset(known_columns)):
        for column in segment.parts[1::2]:
            seen.setdefault(column, None)
    return tuple(seen)


def render_series_dir(
    template: str, values: Mapping[str, object], known_columns: Collection[str]
) -> PurePosixPath:
    """The directory of one series, relative to the mirror root.

    Each template segment becomes exactly one path component. Values that idc-index would
    write verbatim (every value in IDC today) are kept verbatim; '/', '\\', '%', NUL and
    control characters are percent-encoded; a None, missing or empty value becomes
    MISSING_VALUE; a component of "." or ".." has its dots escaped; a component longer
    than NAME_MAX bytes is shortened with a digest suffix.
    """
    if not isinstance(known_columns, frozenset):
        known_columns = frozenset(known_columns)
    components: list[str] = []
    for segment in _parse_template(template, known_columns):
        rendered = "".join(
            part if index % 2 == 0 else _escape_value(_value_text(values.get(part)))
            for index, part in enumerate(segment.parts)
        )
        components.append(_fit_component(rendered))
    return PurePosixPath(*components) if components else PurePosixPath(".")


def _require_uuid(value: str, what: str) -> None:
    if _UUID_RE.fullmatch(value) is None:
        raise UnsafePathError(f"{what} {value!r} is not a canonical lowercase UUID")


def instance_file_name(crdc_instance_uuid: str) -> str:
    """The file name of one instance, as idc-index and the buckets name it: ``<uuid>.dcm``."""
    _require_uuid(crdc_instance_uuid, "crdc_instance_uuid")
    return f"{crdc_instance_uuid}.dcm"


def parse_object_key(key: str, crdc_series_uuid: str) -> str:
    """The crdc_instance_uuid named by a listed object key of series ``crdc_series_uuid``.

    Only ``<crdc_series_uuid>/<lowercase uuid>.dcm`` is accepted; anything else (another
    prefix, nested keys, other extensions, uppercase) raises UnsafePathError, because a key
    is turned into a local file name.
    """
    _require_uuid(crdc_series_uuid, "crdc_series_uuid")
    prefix = crdc_series_uuid + "/"
    if key.startswith(prefix):
        match = _INSTANCE_FILE_RE.fullmatch(key, len(prefix))
        if match is not None:
            return match.group(1)
    raise UnsafePathError(f"object key {key!r} is not {crdc_series_uuid}/<crdc_instance_uuid>.dcm")


def resolve_inside(root: Path, relative: PurePosixPath) -> Path:
    """``root`` joined with ``relative``, refusing any way out of ``root``.

    Refuses absolute paths, ``..``, NUL, lone surrogates (no UTF-8 name can hold them),
    and any existing symlink strictly below ``root`` on the way to (and including) the
    target: a symlink planted in the mirror must not redirect writes elsewhere. ``root``
    itself may be a symlink. This is the only function here that touches the file system
    (lstat only). It checks, it does not lock: a symlink created after the check is not seen.
    """
    if relative.is_absolute():
        raise UnsafePathError(f"path {str(relative)!r} is absolute; expected one inside {root}")
    if ".." in relative.parts:
        raise UnsafePathError(f"path {str(relative)!r} climbs out with '..'")
    if any("\0" in part for part in relative.parts):
        raise UnsafePathError(f"path {str(relative)!r} contains NUL")
    try:
        # A lone surrogate has no UTF-8 form: no file name can carry it faithfully.
        str(relative).encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnsafePathError(
            f"path {str(relative)!r} is not valid Unicode ({error.reason})"
        ) from None
    target = root.joinpath(*relative.parts)
    current = root
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            # Nothing below a missing component can exist yet; it will be created by us.
            break
        except OSError as error:
            raise UnsafePathError(f"cannot check {str(current)!r} for symlinks: {error}") from error
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"{str(current)!r} is a symlink inside the mirror root {str(root)!r}; "
                "refusing to write through it"
            )
    return target
