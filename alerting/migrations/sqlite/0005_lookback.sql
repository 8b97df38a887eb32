-- Look-back (issue #17): when a theft is reported late, the pass history from the theft to
-- the report is searched once per report, on one node. A report's row here is written in
-- the transaction that opens its incident and alerts its latest pass, so a report is looked
-- back exactly once, and one whose row is missing is still to do (after a crash too).
CREATE TABLE theft_lookbacks (
    report_id   INTEGER PRIMARY KEY,
    done_at_ms  INTEGER NOT NULL,
    -- Passes found between the theft and the report.
    passes      INTEGER NOT NULL,
    incident_id TEXT NOT NULL
);
-- Reports made before this version are not looked back.
INSERT INTO theft_lookbacks (report_id, done_at_ms, passes, incident_id)
    SELECT report_id, reported_at_ms, 0, '' FROM theft_reports;

-- A pass an incident's history lists (action 'sighted_earlier'); NULL for other steps.
ALTER TABLE incident_events ADD COLUMN tag_id TEXT;
ALTER TABLE incident_events ADD COLUMN reader_id TEXT;
ALTER TABLE incident_events ADD COLUMN lat REAL;
ALTER TABLE incident_events ADD COLUMN lon REAL;
ALTER TABLE incident_events ADD COLUMN last_seen_ms INTEGER;
ALTER TABLE incident_events ADD COLUMN reads INTEGER;
ALTER TABLE incident_events ADD COLUMN peak_rssi_dbm INTEGER;
CREATE INDEX incident_events_incident ON incident_events (incident_id, event_id);

-- Watch-list hits (issue #17) carry their entry, its reason and case number.
ALTER TABLE alerts ADD COLUMN watch_entry_id TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN case_number TEXT NOT NULL DEFAULT '';

-- Escalation (issue #17): 0 for an alert as first sent; 1 for the re-send of an incident's
-- latest alert because nobody acknowledged the incident in time.
ALTER TABLE alerts ADD COLUMN escalation INTEGER NOT NULL DEFAULT 0;
CREATE INDEX alerts_created ON alerts (created_at_ms);

-- Investigations (issue #17): stakeouts and companion searches read the passes of a reader
-- in a window.
CREATE INDEX passes_reader_time ON passes (reader_id, first_seen_ms);
