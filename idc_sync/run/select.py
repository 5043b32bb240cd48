"""The selection a run asks for, from its settings (flags over environment over config file)
and its positional arguments: manifests are read (and checked) here, every value keeps
where it came from, and a positional argument is a manifest file when one exists by that
name, else comma-separated identifiers to recognise, as `idc download` takes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from idc_sync.config import Settings
from idc_sync.core.errors import SelectionError
from idc_sync.core.manifest import read_manifest
from idc_sync.core.model import ManifestEntry, UnknownSelection
from idc_sync.core.selection import Selection, split_values

# Settings keys of each selection part.
_PARTS = {
    "collection": "collections",
    "series": "series",
    "patient": "patient_ids",
    "study": "study_instance_uids",
    "sql": "sql",
}


def selection_of(settings: Settings, arguments: Sequence[str] = ()) -> Selection:
    """This run's selection; reads every manifest (named in the settings or as an argument)
    first, so a bad one is reported before anything is touched."""
    entries: list[ManifestEntry] = []
    for manifest in settings.manifests:
        entries.extend(read_manifest(manifest))
    identifiers: list[str] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if len(argument) < 4096 and path.is_file():
            entries.extend(read_manifest(path))
        else:
            identifiers.extend(split_values([argument]))
    origins = {part: settings.origin(key) for part, key in _PARTS.items()}
    origins["identifier"] = "argument"
    return Selection(
        collections=tuple(settings.collections),
        series=tuple(settings.series),
        patient_ids=tuple(settings.patient_ids),
        study_instance_uids=tuple(settings.study_instance_uids),
        sql=(settings.sql,) if settings.sql is not None else (),
        manifest_entries=tuple(entries),
        identifiers=tuple(identifiers),
        origins=origins,
    )


NOTHING_SELECTED = (
    "nothing is selected: give collections, series, patients, studies, sql or manifests "
    "(for example `idc-sync sync qin_pet_phantom` or --collection qin_pet_phantom)"
)


def check_unknown(unknown: Sequence[UnknownSelection], *, strict: bool) -> list[UnknownSelection]:
    """Raise SelectionError naming every entry this run gave that the release does not have
    (and, with ``strict``, every one only earlier releases had); return the rest, to report."""
    fatal = [u for u in unknown if u.given and (u.removed_after is None or strict)]
    if fatal:
        shown = [u.describe() for u in fatal[:20]]
        more = f"\n... and {len(fatal) - 20} more" if len(fatal) > 20 else ""
        raise SelectionError("\n".join(shown) + more + "\nnothing was touched")
    return list(unknown)


def describe_unknown(unknown: Sequence[UnknownSelection], limit: int = 20) -> str:
    shown = [u.describe() for u in unknown[:limit]]
    more = f"; and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return "; ".join(shown) + more
