-- Every query idc-sync runs against its SQLite state, by name. state/database.py loads this
-- file; a block starts at a "-- name:" line and runs to the next one. Parameters are named
-- (:owner); a list of values travels as one JSON array (:keys) read with json_each, so no
-- statement is built from text at run time. State changes follow core/lifecycle.py's tables
-- (the guards in state/guards.py fail any other): where a row might already be in the
-- target state, the WHERE clause leaves it alone instead of writing a move onto itself.


-- == the workers' queue (state/queue.py) ================================================

-- name: claim_series
-- Two index range scans, no sort: claiming stays cheap with 600k rows queued. A lease that
-- expired (its worker died) is taken over first.
UPDATE series SET state = 'leased', lease_owner = :owner, lease_expires = :expires,
    attempts = attempts + 1, updated_at = :now
WHERE crdc_series_uuid IN (
    SELECT crdc_series_uuid FROM (
        SELECT crdc_series_uuid FROM series
        WHERE selected = 1 AND state = 'leased' AND lease_expires < :now LIMIT :limit)
    UNION ALL SELECT crdc_series_uuid FROM (
        SELECT crdc_series_uuid FROM series
        WHERE selected = 1 AND state = 'queued' ORDER BY rowid LIMIT :limit)
    LIMIT :limit)
RETURNING crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket, license_short_name,
    source_DOI, instance_count, series_size_bytes, idc_version, root, rel_dir, instances,
    state, attempts, last_error;

-- name: renew_leases
UPDATE series SET lease_expires = :expires WHERE lease_owner = :owner AND state = 'leased';

-- name: release_leases
-- A worker process died (or was stopped) holding these leases: its series go back to the
-- queue now instead of when the lease runs out. Another owner's leases stay as they are.
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE lease_owner = :owner AND state = 'leased';

-- name: requeue_unfinished_series
-- Every selected, unfinished series gets another go in this run.
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE selected = 1 AND state IN ('leased', 'incomplete', 'failed');

-- name: requeue_failed_objects
-- Transient failures are retried; quarantined and refused objects wait for an operator.
UPDATE object SET state = 'pending'
WHERE state = 'failed' AND crdc_series_uuid IN (
    SELECT crdc_series_uuid FROM series WHERE selected = 1 AND state = 'queued');

-- name: create_listing
CREATE TEMP TABLE IF NOT EXISTS listing (
    key              TEXT PRIMARY KEY,
    crdc_series_uuid TEXT NOT NULL,
    size             INTEGER NOT NULL,
    etag             TEXT NOT NULL,
    path             TEXT NOT NULL
);

-- name: clear_listing
DELETE FROM temp.listing;

-- name: add_to_listing
-- :objects, a JSON array of {key, crdc_series_uuid, size, etag, path}: one statement for a
-- whole listing (row by row, each row's bind waits for the GIL: queue.py)
INSERT OR REPLACE INTO temp.listing (key, crdc_series_uuid, size, etag, path)
SELECT o.value ->> 'key', o.value ->> 'crdc_series_uuid', o.value ->> 'size',
    o.value ->> 'etag', o.value ->> 'path'
FROM json_each(:objects) AS o;

-- name: insert_new_listing
-- A listing of keys the state has never seen, at paths no object holds (a series' first
-- listing, most of a first mirror): its rows in one statement, without the temp table.
-- When RETURNING names fewer keys than were listed, the long way below follows; it leaves
-- the rows inserted here as they are.
INSERT OR IGNORE INTO object (key, crdc_series_uuid, size, etag, path, state)
SELECT o.value ->> 'key', o.value ->> 'crdc_series_uuid', o.value ->> 'size',
    o.value ->> 'etag', o.value ->> 'path', 'pending'
FROM json_each(:objects) AS o WHERE true
RETURNING key;

-- name: reset_relisted_objects
-- A known object listed again starts over when it left the mirror (retired), belongs to
-- another series' row (a listing of that series refused it), or changed while unfinished.
UPDATE object SET state = 'pending'
WHERE key IN (
    SELECT o.key FROM temp.listing AS l JOIN object AS o ON o.key = l.key
    WHERE o.state != 'pending' AND (
        o.state = 'retired'
        OR o.crdc_series_uuid != l.crdc_series_uuid
        OR (o.state != 'done' AND (o.size != l.size OR o.etag != l.etag))));

-- name: update_relisted_objects
-- Pending objects take what the listing says now. A path another object holds is left
-- as it was here and reported as a collision.
UPDATE OR IGNORE object SET size = l.size, etag = l.etag, path = l.path,
    crdc_series_uuid = l.crdc_series_uuid
FROM temp.listing AS l
WHERE object.key = l.key AND object.state = 'pending' AND (
    object.size != l.size OR object.etag != l.etag OR object.path IS NOT l.path
    OR object.crdc_series_uuid != l.crdc_series_uuid);

-- name: insert_listed_objects
-- New keys are pending; one whose local path another object holds is not inserted.
INSERT OR IGNORE INTO object (key, crdc_series_uuid, size, etag, path, state)
SELECT key, crdc_series_uuid, size, etag, path, 'pending' FROM temp.listing WHERE true;

-- name: listing_collisions
-- Listed objects that could not take their local path, and who holds it.
SELECT l.key, l.crdc_series_uuid, l.size, l.etag, l.path,
    (SELECT holder.key FROM object AS holder
     WHERE holder.path = l.path AND holder.key != l.key) AS holder
FROM temp.listing AS l LEFT JOIN object AS o ON o.key = l.key
WHERE o.key IS NULL OR (o.state = 'pending' AND o.path IS NOT l.path)
ORDER BY l.key;

-- name: refuse_object
-- An object we will not write (unsafe key, colliding path). A listing naming another
-- series' key must not touch that series' row.
INSERT INTO object (key, crdc_series_uuid, size, etag, path, state, last_error)
VALUES (:key, :crdc_series_uuid, :size, :etag, NULL, 'refused', :reason)
ON CONFLICT (key) DO UPDATE SET state = 'refused', path = NULL,
    last_error = excluded.last_error
WHERE object.crdc_series_uuid = excluded.crdc_series_uuid AND object.state = 'pending';

-- name: objects_to_fetch
SELECT key, crdc_series_uuid, size, etag, path, state, attempts, last_error, retired_path
FROM object
WHERE crdc_series_uuid = :crdc_series_uuid AND state IN ('pending', 'failed') AND key > :after
ORDER BY key LIMIT :limit;

-- name: object_row
SELECT key, crdc_series_uuid, size, etag, path, state, attempts, last_error, retired_path
FROM object WHERE key = :key AND path IS NOT NULL;

-- name: record_outcomes
-- Files fetched, restored or re-verified (done), or given up on for this run: :outcomes, a
-- JSON array of {key, state, attempts, last_error, checksum_kind, checksum, fetched_at}, one
-- per key. A restored file is back in place: its journal entry goes.
UPDATE object SET state = o.value ->> 'state', attempts = o.value ->> 'attempts',
    last_error = o.value ->> 'last_error', checksum_kind = o.value ->> 'checksum_kind',
    checksum = o.value ->> 'checksum',
    fetched_at = COALESCE(o.value ->> 'fetched_at', object.fetched_at),
    retired_path = CASE WHEN o.value ->> 'state' = 'done' THEN NULL ELSE object.retired_path END
FROM json_each(:outcomes) AS o
WHERE object.key = o.value ->> 'key';

-- name: record_notes
-- Attempts that changed no state (the run stopped under them): only their counts and
-- reasons. :notes, a JSON array of {key, attempts, last_error}, one per key.
UPDATE object SET attempts = o.value ->> 'attempts', last_error = o.value ->> 'last_error'
FROM json_each(:notes) AS o
WHERE object.key = o.value ->> 'key';

-- name: tally
SELECT state, COUNT(*), SUM(size) FROM object WHERE crdc_series_uuid = :crdc_series_uuid
GROUP BY state;

-- name: finish_series
UPDATE series SET state = :state, last_error = :last_error, files_done = :files_done,
    bytes_done = :bytes_done, lease_owner = NULL, lease_expires = NULL, updated_at = :now
WHERE crdc_series_uuid = :crdc_series_uuid;


-- == planning (state/plans.py) ===========================================================

-- name: begin_plan
-- Inside the plan's transaction: the plan marks what it selects.
UPDATE series SET selected = 0 WHERE selected = 1;

-- name: count_series
SELECT COUNT(*) FROM series;

-- name: enqueue
-- New series are queued, with the catalog they came from; known ones are marked selected,
-- take the bucket the release names now, and keep their state and their catalog (retired
-- ones are requeued by requeue_reselected).
INSERT INTO series (crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket,
    license_short_name, source_DOI, instance_count, series_size_bytes, idc_version, root,
    rel_dir, instances, state, updated_at, catalog)
VALUES (:crdc_series_uuid, :SeriesInstanceUID, :collection_id, :aws_bucket,
    :license_short_name, :source_DOI, :instance_count, :series_size_bytes, :idc_version, :root,
    :rel_dir, :instances, 'queued', :now, :catalog)
ON CONFLICT (crdc_series_uuid) DO UPDATE SET selected = 1, leaving = NULL,
    aws_bucket = excluded.aws_bucket, instances = excluded.instances
WHERE series.selected = 0 OR series.aws_bucket != excluded.aws_bucket
    OR series.instances IS NOT excluded.instances;

-- name: journal_reselected_objects
-- A series selected again while it was being retired: its files may sit at either end of
-- their move, so each is looked for (restored or re-verified) instead of trusted.
UPDATE object SET state = 'retired'
WHERE state = 'done' AND retired_path IS NOT NULL AND crdc_series_uuid IN (
    SELECT crdc_series_uuid FROM series WHERE selected = 1 AND state = 'retiring');

-- name: requeue_reselected
-- Selected again after it left: fetched anew, or restored from where retirement put it.
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL, last_error = NULL
WHERE selected = 1 AND state IN ('retired', 'retiring');

-- name: unselected_series
-- Series the mirror still holds that this plan did not select, a page at a time.
SELECT crdc_series_uuid, SeriesInstanceUID FROM series
WHERE selected = 0 AND state != 'retired' AND crdc_series_uuid > :after
ORDER BY crdc_series_uuid LIMIT :limit;

-- name: mark_leaving
UPDATE series SET leaving = :leaving WHERE crdc_series_uuid = :crdc_series_uuid;

-- name: leaving_totals
-- What the unselected series hold, by why they leave.
SELECT s.leaving, COUNT(*), COALESCE(SUM(t.files_done), 0), COALESCE(SUM(t.bytes_done), 0)
FROM series AS s LEFT JOIN series_object_totals AS t USING (crdc_series_uuid)
WHERE s.selected = 0 AND s.state NOT IN ('retired', 'retiring')
GROUP BY s.leaving ORDER BY s.leaving;

-- name: mirror_verified_files
-- Every verified file the mirror holds, selected or not.
SELECT COALESCE(SUM(t.files_done), 0)
FROM series AS s JOIN series_object_totals AS t USING (crdc_series_uuid)
WHERE s.state != 'retired';

-- name: forget_selection
DELETE FROM selection;

-- name: remember_selection
INSERT INTO selection (kind, value, origin, added_at) VALUES (:kind, :value, :origin, :now)
ON CONFLICT (kind, value) DO NOTHING;

-- name: stored_selection
SELECT kind, value, origin, added_at FROM selection ORDER BY kind, value;

-- name: known_series
SELECT crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket, license_short_name,
    source_DOI, instance_count, series_size_bytes, idc_version, root, rel_dir, instances,
    state, attempts, last_error
FROM series WHERE crdc_series_uuid IN (SELECT value FROM json_each(:uuids));

-- name: live_uids
-- Which of these SeriesInstanceUIDs the mirror holds under some version.
SELECT DISTINCT SeriesInstanceUID FROM series
WHERE state NOT IN ('retired', 'retiring')
    AND SeriesInstanceUID IN (SELECT value FROM json_each(:uids));

-- name: done_of
-- Files and bytes already verified for these series.
SELECT COALESCE(SUM(files_done), 0), COALESCE(SUM(bytes_done), 0)
FROM series_object_totals WHERE crdc_series_uuid IN (SELECT value FROM json_each(:uuids));

-- name: live_series
-- The series the mirror holds (not retired), a page at a time.
SELECT s.crdc_series_uuid, s.SeriesInstanceUID, s.collection_id, s.state, s.leaving,
    COALESCE(t.files_done, 0), COALESCE(t.bytes_done, 0)
FROM series AS s LEFT JOIN series_object_totals AS t USING (crdc_series_uuid)
WHERE s.state != 'retired' AND s.crdc_series_uuid > :after
ORDER BY s.crdc_series_uuid LIMIT :limit;


-- == retirement (state/retirement.py) ===================================================

-- name: series_to_retire
-- Unselected series that leave now: those IDC removed or revised, those that left the
-- selection when the run prunes, and any whose retirement a killed run left unfinished.
SELECT crdc_series_uuid, SeriesInstanceUID, collection_id, aws_bucket, license_short_name,
    source_DOI, instance_count, series_size_bytes, idc_version, root, rel_dir, instances,
    state, attempts, last_error
FROM series
WHERE selected = 0 AND state != 'retired' AND crdc_series_uuid > :after AND (
    state = 'retiring' OR leaving IN ('removed', 'revised')
    OR (:prune AND leaving = 'unselected'))
ORDER BY crdc_series_uuid LIMIT :limit;

-- name: replacement_pending
-- A selected version of this SeriesInstanceUID is not complete yet: the old one stays.
SELECT 1 FROM series
WHERE SeriesInstanceUID = :uid AND selected = 1 AND state != 'complete' LIMIT 1;

-- name: retiring_files
SELECT key, path, retired_path, size FROM object
WHERE crdc_series_uuid = :crdc_series_uuid AND state = 'done' AND path IS NOT NULL
ORDER BY key;

-- name: journal_move
-- Written, with the series' state, before any file moves.
UPDATE object SET retired_path = :retired_path WHERE key = :key AND state = 'done';

-- name: begin_retiring
UPDATE series SET state = 'retiring', lease_owner = NULL, lease_expires = NULL,
    updated_at = :now
WHERE crdc_series_uuid = :crdc_series_uuid AND state != 'retiring';

-- name: forget_move
-- The file was not there to move (or was deleted): nothing to restore from.
UPDATE object SET retired_path = NULL WHERE key = :key;

-- name: retire_objects
UPDATE object SET state = 'retired', path = NULL, last_error = :note
WHERE crdc_series_uuid = :crdc_series_uuid AND state != 'retired';

-- name: retire_series
UPDATE series SET state = 'retired', last_error = :note, lease_owner = NULL,
    lease_expires = NULL, updated_at = :now
WHERE crdc_series_uuid = :crdc_series_uuid;

-- name: retired_totals
-- What the mirror has retired: series, and the files (and bytes) kept in retired_dir.
SELECT
    (SELECT COUNT(*) FROM series WHERE state = 'retired'),
    COUNT(*), COALESCE(SUM(size), 0)
FROM object WHERE state = 'retired' AND retired_path IS NOT NULL;


-- == reports (state/reports.py) =========================================================

-- name: collection_totals
-- From the running totals: one row per collection, however many objects the state holds.
SELECT collection_id, series_total, series_complete, files_expected, bytes_expected,
    series_failed, files_done, bytes_done, files_failed, files_quarantined
FROM collection_totals WHERE series_total > 0 ORDER BY collection_id;

-- name: mirror_complete
-- Every selected series complete, from the running totals; a state selecting none is not.
SELECT COALESCE(SUM(series_total), 0) > 0
    AND COALESCE(SUM(series_complete), 0) = COALESCE(SUM(series_total), 0)
FROM collection_totals;

-- name: status_by_collection
-- The same numbers counted from the rows themselves (tests hold the totals to them).
SELECT s.collection_id, COUNT(*), SUM(s.state = 'complete'),
    COALESCE(SUM(s.instance_count), 0), COALESCE(SUM(s.series_size_bytes), 0),
    SUM(s.state = 'failed'),
    COALESCE(SUM(o.files_done), 0), COALESCE(SUM(o.bytes_done), 0),
    COALESCE(SUM(o.failed), 0), COALESCE(SUM(o.quarantined), 0)
FROM series AS s LEFT JOIN (
    SELECT crdc_series_uuid, SUM(state = 'done') AS files_done,
        SUM(CASE WHEN state = 'done' THEN size ELSE 0 END) AS bytes_done,
        SUM(state IN ('failed', 'refused')) AS failed,
        SUM(state = 'quarantined') AS quarantined
    FROM object GROUP BY crdc_series_uuid) AS o
ON o.crdc_series_uuid = s.crdc_series_uuid
WHERE s.selected = 1 GROUP BY s.collection_id ORDER BY s.collection_id;

-- name: recent_problems
-- Through the index of problem objects and the series state index: cheap however many
-- objects are done. CROSS JOIN keeps the object side outer, where the partial index serves.
SELECT s.collection_id, s.crdc_series_uuid, o.key, o.state, o.last_error
FROM object AS o CROSS JOIN series AS s ON s.crdc_series_uuid = o.crdc_series_uuid
WHERE o.state IN ('failed', 'quarantined', 'refused') AND s.selected = 1
UNION ALL
SELECT collection_id, crdc_series_uuid, NULL, state, last_error FROM series
WHERE selected = 1 AND state IN ('queued', 'leased', 'incomplete', 'failed')
LIMIT :limit;

-- name: problems
-- Selected series that are not complete, and objects that failed, with reasons.
SELECT s.collection_id, s.crdc_series_uuid, o.key, o.state, o.last_error
FROM object AS o JOIN series AS s ON s.crdc_series_uuid = o.crdc_series_uuid
WHERE s.selected = 1 AND o.state IN ('failed', 'quarantined', 'refused')
UNION ALL
SELECT collection_id, crdc_series_uuid, NULL, state, last_error FROM series
WHERE selected = 1 AND state != 'complete'
LIMIT :limit;

-- name: count_selected
SELECT COUNT(*) FROM series WHERE selected = 1;

-- name: held_unselected
-- Series still in IDC that left the selection and wait for --prune: series, files, bytes.
SELECT COUNT(*), COALESCE(SUM(t.files_done), 0), COALESCE(SUM(t.bytes_done), 0)
FROM series AS s LEFT JOIN series_object_totals AS t USING (crdc_series_uuid)
WHERE s.selected = 0 AND s.state NOT IN ('retired', 'retiring') AND s.leaving = 'unselected';

-- name: provenance_page
SELECT o.path, o.crdc_series_uuid, o.key, s.SeriesInstanceUID, s.collection_id,
    s.license_short_name, s.source_DOI, o.size, o.checksum, o.checksum_kind,
    s.idc_version, o.fetched_at
FROM object AS o JOIN series AS s ON s.crdc_series_uuid = o.crdc_series_uuid
WHERE o.state = 'done' AND o.key > :after ORDER BY o.key LIMIT :limit;

-- name: citations
-- (license_short_name, source_DOI, series) over the series the mirror holds complete.
SELECT license_short_name, source_DOI, COUNT(*) FROM series
WHERE selected = 1 AND state = 'complete' GROUP BY 1, 2 ORDER BY 1, 2;


-- == repairs: verify, retry-failed, a moved mirror (state/repairs.py) ===================

-- name: objects_done
SELECT key, crdc_series_uuid, size, etag, path, checksum_kind, checksum FROM object
WHERE state = 'done' AND key > :after ORDER BY key LIMIT :limit;

-- name: sample_done
-- SQLite keeps only :count rows while it sorts, so memory stays small on a large mirror.
SELECT key, crdc_series_uuid, size, etag, path, checksum_kind, checksum FROM object
WHERE state = 'done' ORDER BY random() LIMIT :count;

-- name: refetch_objects
UPDATE object SET state = 'pending', last_error = :reason, checksum_kind = NULL,
    checksum = NULL, fetched_at = NULL
WHERE state = 'done' AND key IN (SELECT value FROM json_each(:keys));

-- name: requeue_series_of
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL,
    last_error = :reason, updated_at = :now
WHERE state IN ('leased', 'complete', 'incomplete', 'failed') AND crdc_series_uuid IN (
    SELECT crdc_series_uuid FROM object WHERE key IN (SELECT value FROM json_each(:keys)));

-- name: retry_objects
UPDATE object SET state = 'pending', last_error = NULL WHERE state = :state;

-- name: retry_series
-- Failed or incomplete series, and any other with an object just put back; never one
-- that is leaving the mirror.
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL, updated_at = :now
WHERE state IN ('failed', 'incomplete') OR (
    state IN ('leased', 'complete') AND crdc_series_uuid IN (
        SELECT crdc_series_uuid FROM object WHERE state = 'pending'));

-- name: move_series_root
UPDATE series SET root = :new WHERE root = :old;

-- name: move_object_paths
UPDATE object SET path = :new || substr(path, length(:old) + 1)
WHERE path IS NOT NULL AND substr(path, 1, length(:old) + 1) = :old || '/';

-- name: reverify_moved_objects
-- After a move every file is hashed where it is now; nothing that matches is fetched.
UPDATE object SET state = 'pending', last_error = :reason
WHERE state = 'done' AND substr(path, 1, length(:new) + 1) = :new || '/';

-- name: requeue_moved_series
UPDATE series SET state = 'queued', lease_owner = NULL, lease_expires = NULL,
    last_error = :reason, updated_at = :now
WHERE root = :new AND state IN ('leased', 'complete', 'incomplete', 'failed');


-- == the mirror this state describes (state/meta.py) ====================================

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: series_roots
SELECT root, COUNT(*) FROM series GROUP BY root ORDER BY 2 DESC;
