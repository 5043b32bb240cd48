-- Schema version 3: what the mirror is, not only what it holds.
--
-- meta: facts about the mirror this state describes (its absolute destination, its id,
-- written into a marker file at the destination), so a run pointed at another place, or at
-- a disk that is not mounted, is refused instead of starting over.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- selection: every selection entry the mirror was given and not pruned since. Each plan
-- resolves the union of these and the entries of its own run, so a second selection adds
-- to the mirror instead of replacing it.
CREATE TABLE selection (
    kind     TEXT NOT NULL,  -- collection | series | patient | study | sql | crdc_series_uuid | crdc_instance_uuid
    value    TEXT NOT NULL,
    origin   TEXT NOT NULL,  -- where it was first given: "--collection", "config.toml", "cohort.txt:12"
    added_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;

-- Why a series the last plan did not select leaves the mirror: 'removed' (gone from the IDC
-- release), 'revised' (its SeriesInstanceUID has a new crdc_series_uuid) or 'unselected'
-- (still in IDC, but no longer selected: only --prune retires those). NULL while selected.
ALTER TABLE series ADD COLUMN leaving TEXT;

-- The retirement journal: where retirement moves (or moved) a file, written before the
-- move. A run killed while retiring finishes from here, and a series selected again is
-- restored from here instead of being fetched.
ALTER TABLE object ADD COLUMN retired_path TEXT;
