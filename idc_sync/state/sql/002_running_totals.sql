-- Schema version 2: running totals for `status` and /status. A state holding 58 M objects
-- must not be aggregated on every call: triggers keep per-series object counts and
-- per-collection totals of the selected series in the same transaction as every write to
-- `series` or `object`, whatever statement makes it. The INSERTs seed them from the rows
-- an older state already holds.

CREATE TABLE series_object_totals (
    crdc_series_uuid  TEXT PRIMARY KEY,
    files_done        INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    files_failed      INTEGER NOT NULL DEFAULT 0,  -- failed or refused
    files_quarantined INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE collection_totals (                   -- over selected series only
    collection_id     TEXT PRIMARY KEY,
    series_total      INTEGER NOT NULL DEFAULT 0,
    series_complete   INTEGER NOT NULL DEFAULT 0,
    series_failed     INTEGER NOT NULL DEFAULT 0,
    files_expected    INTEGER NOT NULL DEFAULT 0,
    bytes_expected    INTEGER NOT NULL DEFAULT 0,
    files_done        INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    files_failed      INTEGER NOT NULL DEFAULT 0,
    files_quarantined INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- a row for every series, made with it, so object triggers only ever update
INSERT INTO series_object_totals
    SELECT s.crdc_series_uuid, COALESCE(o.files_done, 0), COALESCE(o.bytes_done, 0),
        COALESCE(o.files_failed, 0), COALESCE(o.files_quarantined, 0)
    FROM series AS s LEFT JOIN (
        SELECT crdc_series_uuid, SUM(state = 'done') AS files_done,
            SUM(CASE WHEN state = 'done' THEN size ELSE 0 END) AS bytes_done,
            SUM(state IN ('failed', 'refused')) AS files_failed,
            SUM(state = 'quarantined') AS files_quarantined
        FROM object GROUP BY crdc_series_uuid) AS o
    ON o.crdc_series_uuid = s.crdc_series_uuid;
CREATE TRIGGER totals_series_register AFTER INSERT ON series
BEGIN
    INSERT INTO series_object_totals (crdc_series_uuid) SELECT NEW.crdc_series_uuid
        WHERE NOT EXISTS (SELECT 1 FROM series_object_totals
            WHERE crdc_series_uuid = NEW.crdc_series_uuid);
END;
INSERT INTO collection_totals
    SELECT s.collection_id, COUNT(*), SUM(s.state = 'complete'), SUM(s.state = 'failed'),
        COALESCE(SUM(s.instance_count), 0), COALESCE(SUM(s.series_size_bytes), 0),
        COALESCE(SUM(t.files_done), 0), COALESCE(SUM(t.bytes_done), 0),
        COALESCE(SUM(t.files_failed), 0), COALESCE(SUM(t.files_quarantined), 0)
    FROM series AS s LEFT JOIN series_object_totals AS t
        ON t.crdc_series_uuid = s.crdc_series_uuid
    WHERE s.selected = 1 GROUP BY s.collection_id;
-- holds only objects with a problem: recent_problems finds them without a full scan
CREATE INDEX object_problems ON object (crdc_series_uuid)
    WHERE state IN ('failed', 'quarantined', 'refused');
CREATE TRIGGER totals_object_insert AFTER INSERT ON object
WHEN NEW.state IN ('done', 'failed', 'refused', 'quarantined')
BEGIN
    UPDATE series_object_totals SET
        files_done = files_done + (NEW.state = 'done'),
        bytes_done = bytes_done + (CASE WHEN NEW.state = 'done' THEN NEW.size ELSE 0 END),
        files_failed = files_failed + (NEW.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined + (NEW.state = 'quarantined')
        WHERE crdc_series_uuid = NEW.crdc_series_uuid;
    UPDATE collection_totals SET
        files_done = files_done + (NEW.state = 'done'),
        bytes_done = bytes_done + (CASE WHEN NEW.state = 'done' THEN NEW.size ELSE 0 END),
        files_failed = files_failed + (NEW.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined + (NEW.state = 'quarantined')
        WHERE collection_id = (SELECT collection_id FROM series
            WHERE crdc_series_uuid = NEW.crdc_series_uuid AND selected = 1);
END;

CREATE TRIGGER totals_object_delete AFTER DELETE ON object
WHEN OLD.state IN ('done', 'failed', 'refused', 'quarantined')
BEGIN
    UPDATE series_object_totals SET
        files_done = files_done - (OLD.state = 'done'),
        bytes_done = bytes_done - (CASE WHEN OLD.state = 'done' THEN OLD.size ELSE 0 END),
        files_failed = files_failed - (OLD.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined - (OLD.state = 'quarantined')
        WHERE crdc_series_uuid = OLD.crdc_series_uuid;
    UPDATE collection_totals SET
        files_done = files_done - (OLD.state = 'done'),
        bytes_done = bytes_done - (CASE WHEN OLD.state = 'done' THEN OLD.size ELSE 0 END),
        files_failed = files_failed - (OLD.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined - (OLD.state = 'quarantined')
        WHERE collection_id = (SELECT collection_id FROM series
            WHERE crdc_series_uuid = OLD.crdc_series_uuid AND selected = 1);
END;

CREATE TRIGGER totals_object_update_old AFTER UPDATE OF state, size, crdc_series_uuid ON object
WHEN OLD.state IN ('done', 'failed', 'refused', 'quarantined') AND (OLD.state IS NOT NEW.state OR OLD.size IS NOT NEW.size OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid)
BEGIN
    UPDATE series_object_totals SET
        files_done = files_done - (OLD.state = 'done'),
        bytes_done = bytes_done - (CASE WHEN OLD.state = 'done' THEN OLD.size ELSE 0 END),
        files_failed = files_failed - (OLD.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined - (OLD.state = 'quarantined')
        WHERE crdc_series_uuid = OLD.crdc_series_uuid;
    UPDATE collection_totals SET
        files_done = files_done - (OLD.state = 'done'),
        bytes_done = bytes_done - (CASE WHEN OLD.state = 'done' THEN OLD.size ELSE 0 END),
        files_failed = files_failed - (OLD.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined - (OLD.state = 'quarantined')
        WHERE collection_id = (SELECT collection_id FROM series
            WHERE crdc_series_uuid = OLD.crdc_series_uuid AND selected = 1);
END;

CREATE TRIGGER totals_object_update_new AFTER UPDATE OF state, size, crdc_series_uuid ON object
WHEN NEW.state IN ('done', 'failed', 'refused', 'quarantined') AND (OLD.state IS NOT NEW.state OR OLD.size IS NOT NEW.size OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid)
BEGIN
    UPDATE series_object_totals SET
        files_done = files_done + (NEW.state = 'done'),
        bytes_done = bytes_done + (CASE WHEN NEW.state = 'done' THEN NEW.size ELSE 0 END),
        files_failed = files_failed + (NEW.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined + (NEW.state = 'quarantined')
        WHERE crdc_series_uuid = NEW.crdc_series_uuid;
    UPDATE collection_totals SET
        files_done = files_done + (NEW.state = 'done'),
        bytes_done = bytes_done + (CASE WHEN NEW.state = 'done' THEN NEW.size ELSE 0 END),
        files_failed = files_failed + (NEW.state IN ('failed', 'refused')),
        files_quarantined = files_quarantined + (NEW.state = 'quarantined')
        WHERE collection_id = (SELECT collection_id FROM series
            WHERE crdc_series_uuid = NEW.crdc_series_uuid AND selected = 1);
END;

CREATE TRIGGER totals_series_insert AFTER INSERT ON series
WHEN NEW.selected = 1
BEGIN
    INSERT INTO collection_totals (collection_id) SELECT NEW.collection_id WHERE NOT EXISTS (SELECT 1 FROM collection_totals WHERE collection_id = NEW.collection_id);
    UPDATE collection_totals SET
        series_total = series_total + 1,
        series_complete = series_complete + (NEW.state = 'complete'),
        series_failed = series_failed + (NEW.state = 'failed'),
        files_expected = files_expected + COALESCE(NEW.instance_count, 0),
        bytes_expected = bytes_expected + COALESCE(NEW.series_size_bytes, 0),
        files_done = files_done + COALESCE((SELECT files_done FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        bytes_done = bytes_done + COALESCE((SELECT bytes_done FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        files_failed = files_failed + COALESCE((SELECT files_failed FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        files_quarantined = files_quarantined + COALESCE((SELECT files_quarantined FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0)
        WHERE collection_id = NEW.collection_id;
END;

CREATE TRIGGER totals_series_delete AFTER DELETE ON series
WHEN OLD.selected = 1
BEGIN
    UPDATE collection_totals SET
        series_total = series_total - 1,
        series_complete = series_complete - (OLD.state = 'complete'),
        series_failed = series_failed - (OLD.state = 'failed'),
        files_expected = files_expected - COALESCE(OLD.instance_count, 0),
        bytes_expected = bytes_expected - COALESCE(OLD.series_size_bytes, 0),
        files_done = files_done - COALESCE((SELECT files_done FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        bytes_done = bytes_done - COALESCE((SELECT bytes_done FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        files_failed = files_failed - COALESCE((SELECT files_failed FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        files_quarantined = files_quarantined - COALESCE((SELECT files_quarantined FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0)
        WHERE collection_id = OLD.collection_id;
END;

CREATE TRIGGER totals_series_update_old AFTER UPDATE OF selected, state, collection_id, crdc_series_uuid, instance_count, series_size_bytes ON series
WHEN OLD.selected = 1 AND (OLD.selected IS NOT NEW.selected OR OLD.collection_id IS NOT NEW.collection_id OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid OR (OLD.state = 'complete') IS NOT (NEW.state = 'complete') OR (OLD.state = 'failed') IS NOT (NEW.state = 'failed') OR OLD.instance_count IS NOT NEW.instance_count OR OLD.series_size_bytes IS NOT NEW.series_size_bytes)
BEGIN
    UPDATE collection_totals SET
        series_total = series_total - 1,
        series_complete = series_complete - (OLD.state = 'complete'),
        series_failed = series_failed - (OLD.state = 'failed'),
        files_expected = files_expected - COALESCE(OLD.instance_count, 0),
        bytes_expected = bytes_expected - COALESCE(OLD.series_size_bytes, 0),
        files_done = files_done - COALESCE((SELECT files_done FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        bytes_done = bytes_done - COALESCE((SELECT bytes_done FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        files_failed = files_failed - COALESCE((SELECT files_failed FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0),
        files_quarantined = files_quarantined - COALESCE((SELECT files_quarantined FROM series_object_totals WHERE crdc_series_uuid = OLD.crdc_series_uuid), 0)
        WHERE collection_id = OLD.collection_id;
END;

CREATE TRIGGER totals_series_update_new AFTER UPDATE OF selected, state, collection_id, crdc_series_uuid, instance_count, series_size_bytes ON series
WHEN NEW.selected = 1 AND (OLD.selected IS NOT NEW.selected OR OLD.collection_id IS NOT NEW.collection_id OR OLD.crdc_series_uuid IS NOT NEW.crdc_series_uuid OR (OLD.state = 'complete') IS NOT (NEW.state = 'complete') OR (OLD.state = 'failed') IS NOT (NEW.state = 'failed') OR OLD.instance_count IS NOT NEW.instance_count OR OLD.series_size_bytes IS NOT NEW.series_size_bytes)
BEGIN
    INSERT INTO collection_totals (collection_id) SELECT NEW.collection_id WHERE NOT EXISTS (SELECT 1 FROM collection_totals WHERE collection_id = NEW.collection_id);
    UPDATE collection_totals SET
        series_total = series_total + 1,
        series_complete = series_complete + (NEW.state = 'complete'),
        series_failed = series_failed + (NEW.state = 'failed'),
        files_expected = files_expected + COALESCE(NEW.instance_count, 0),
        bytes_expected = bytes_expected + COALESCE(NEW.series_size_bytes, 0),
        files_done = files_done + COALESCE((SELECT files_done FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        bytes_done = bytes_done + COALESCE((SELECT bytes_done FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        files_failed = files_failed + COALESCE((SELECT files_failed FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0),
        files_quarantined = files_quarantined + COALESCE((SELECT files_quarantined FROM series_object_totals WHERE crdc_series_uuid = NEW.crdc_series_uuid), 0)
        WHERE collection_id = NEW.collection_id;
END;
