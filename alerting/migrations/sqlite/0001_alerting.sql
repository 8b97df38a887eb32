-- Alerting: patrol zones and units, incidents, and the durable alert log.
CREATE TABLE zones (
    zone_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    geojson       TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE patrol_units (
    unit_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE unit_zones (
    unit_id TEXT NOT NULL REFERENCES patrol_units (unit_id),
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    PRIMARY KEY (unit_id, zone_id)
);

-- One incident per theft: successive sightings of the same stolen bike update it.
CREATE TABLE incidents (
    incident_id   TEXT PRIMARY KEY,
    bike_id       INTEGER NOT NULL,
    report_id     INTEGER NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    opened_at_ms  INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- The alert log: an alert is here before any patrol unit is sent it.
CREATE TABLE alerts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id      TEXT NOT NULL UNIQUE,
    kind          INTEGER NOT NULL,
    plate         TEXT NOT NULL,
    tag_id        TEXT NOT NULL,
    reader_id     TEXT NOT NULL,
    lat           REAL NOT NULL,
    lon           REAL NOT NULL,
    seen_at_ms    INTEGER NOT NULL,
    incident_id   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- Who is entitled to each alert.
CREATE TABLE alert_recipients (
    unit_id TEXT NOT NULL,
    seq     INTEGER NOT NULL REFERENCES alerts (seq),
    PRIMARY KEY (unit_id, seq)
);
