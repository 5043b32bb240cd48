-- Schema version 1: a row per series and a row per object of the mirror's queue.

CREATE TABLE IF NOT EXISTS series (
    crdc_series_uuid   TEXT PRIMARY KEY,
    SeriesInstanceUID  TEXT NOT NULL,
    collection_id      TEXT NOT NULL,
    aws_bucket         TEXT NOT NULL,
    license_short_name TEXT,
    source_DOI         TEXT,
    instance_count     INTEGER,           -- expected files; NULL for earlier-release versions
    series_size_bytes  INTEGER,           -- expected bytes (series_size_MB * 1e6)
    idc_version        INTEGER NOT NULL,  -- IDC release the row came from
    root               TEXT NOT NULL,     -- mirror root chosen by license policy
    rel_dir            TEXT NOT NULL,     -- rendered dir_template, relative to root
    instances          TEXT,              -- JSON list when a manifest named single instances
    selected           INTEGER NOT NULL DEFAULT 1,
    state              TEXT NOT NULL,     -- see lifecycle.SeriesState
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    lease_owner        TEXT,
    lease_expires      REAL,
    files_done         INTEGER NOT NULL DEFAULT 0,
    bytes_done         INTEGER NOT NULL DEFAULT 0,
    updated_at         REAL NOT NULL
);
-- (selected, state) entries end in rowid, so claims walk plan order without a sort and
-- a new plan's rows append at the end of this index instead of landing at random.
CREATE INDEX IF NOT EXISTS series_by_state ON series (selected, state);

CREATE TABLE IF NOT EXISTS object (
    key              TEXT PRIMARY KEY,    -- <crdc_series_uuid>/<crdc_instance_uuid>.dcm
    crdc_series_uuid TEXT NOT NULL REFERENCES series (crdc_series_uuid),
    size             INTEGER NOT NULL,
    etag             TEXT NOT NULL,
    path             TEXT UNIQUE,          -- two objects never share a local path; NULL if refused
    state            TEXT NOT NULL,        -- see lifecycle.ObjectState
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    checksum_kind    TEXT,                 -- md5 | multipart-md5 | crc32c | size-only
    checksum         TEXT,
    fetched_at       REAL
);
CREATE INDEX IF NOT EXISTS object_by_series ON object (crdc_series_uuid, state);
