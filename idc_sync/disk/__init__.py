"""The local file system: temp files, fsync and rename into place, the storage threads,
retirement of series that leave the mirror, and the provenance manifest."""
