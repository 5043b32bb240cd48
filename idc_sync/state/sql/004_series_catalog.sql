-- Schema version 4: which catalog each series came from. An IDC release reaches a mirror
-- as the installed idc-index-data or, with follow_releases, as a wheel the daemon fetched
-- and unpacked into <state_dir>/catalogs/<version>/ (catalog/sources.py). `catalog` is the
-- idc-index-data version of the catalog whose plan first queued the series; NULL for
-- series queued before schema version 4 or from index files given by hand.
ALTER TABLE series ADD COLUMN catalog TEXT;
