-- Alerting: patrol zones and units, incidents, and the durable alert log.
CREATE TABLE zones (
    zone_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    geojson       TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE patrol_units (
    unit_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE unit_zones (
    unit_id TEXT NOT NULL REFERENCES patrol_units (unit_id),
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    PRIMARY KEY (unit_id, zone_id)
);

-- One incident per theft: successive sightings of the same stolen bike update it.
CREATE TABLE incidents (
    incident_id   TEXT PRIMARY KEY,
    bike_id       BIGINT NOT NULL,
    report_id     BIGINT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    opened_at_ms  BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- The alert log: an alert is here before any patrol unit is sent it.
CREATE TABLE alerts (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id      TEXT NOT NULL UNIQUE,
    kind          BIGINT NOT NULL,
    plate         TEXT NOT NULL,
    tag_id        TEXT NOT NULL,
    reader_id     TEXT NOT NULL,
    lat           DOUBLE PRECISION NOT NULL,
    lon           DOUBLE PRECISION NOT NULL,
    seen_at_ms    BIGINT NOT NULL,
    incident_id   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Who is entitled to each alert.
CREATE TABLE alert_recipients (
    unit_id TEXT NOT NULL,
    seq     BIGINT NOT NULL REFERENCES alerts (seq),
    PRIMARY KEY (unit_id, seq)
);
