-- Alerting: zones and patrol units, incidents with their history, and the durable alert log.
CREATE TABLE zones (
    zone_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    -- 'patrol' (routes alerts to its units) or 'watch' (urgent alerts inside it).
    kind          TEXT NOT NULL DEFAULT 'patrol',
    geojson       TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE patrol_units (
    unit_id        TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    -- A command-center unit receives every alert.
    command_center INTEGER NOT NULL DEFAULT 0,
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE unit_zones (
    unit_id TEXT NOT NULL REFERENCES patrol_units (unit_id),
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    PRIMARY KEY (unit_id, zone_id)
);

-- Successive sightings that are the same matter (one theft, one armed bike moving, one
-- revoked tag) are one incident. dedup_key names that matter, e.g. 'theft:42'.
CREATE TABLE incidents (
    incident_id        TEXT PRIMARY KEY,
    kind               INTEGER NOT NULL,
    bike_id            INTEGER NOT NULL,
    dedup_key          TEXT NOT NULL,
    -- 'open', 'acknowledged' or 'resolved'.
    state              TEXT NOT NULL,
    opened_at_ms       INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    acknowledged_by    TEXT,
    acknowledged_at_ms INTEGER,
    resolved_by        TEXT,
    resolved_at_ms     INTEGER,
    outcome            INTEGER,
    note               TEXT NOT NULL DEFAULT ''
);
-- At most one unresolved incident per matter.
CREATE UNIQUE INDEX incidents_live ON incidents (dedup_key) WHERE state <> 'resolved';

-- Every step of an incident's life.
CREATE TABLE incident_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id),
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    note        TEXT NOT NULL
);

-- The alert log: an alert is here before any patrol unit is sent it.
CREATE TABLE alerts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id      TEXT NOT NULL UNIQUE,
    kind          INTEGER NOT NULL,
    priority      INTEGER NOT NULL,
    plate         TEXT NOT NULL,
    tag_id        TEXT NOT NULL,
    reader_id     TEXT NOT NULL,
    lat           REAL NOT NULL,
    lon           REAL NOT NULL,
    seen_at_ms    INTEGER NOT NULL,
    incident_id   TEXT NOT NULL,
    zone_id       TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX alerts_incident ON alerts (incident_id);

-- Who is entitled to each alert.
CREATE TABLE alert_recipients (
    unit_id TEXT NOT NULL,
    seq     INTEGER NOT NULL REFERENCES alerts (seq),
    PRIMARY KEY (unit_id, seq)
);
