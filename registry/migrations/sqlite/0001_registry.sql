-- Registry: identities (readers, kiosks, API tokens), owners, bikes, theft reports, audit log.
CREATE TABLE readers (
    reader_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    lat           REAL NOT NULL,
    lon           REAL NOT NULL,
    -- The MQTT secret, sealed with the at-rest key (nonce || ciphertext).
    secret_sealed BLOB NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE kiosks (
    kiosk_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- Bearer tokens of kiosks and patrol units: only their SHA-256 is kept.
CREATE TABLE api_tokens (
    token_hash    BLOB PRIMARY KEY,
    role          TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE TABLE owners (
    owner_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    -- Keyed hash (HMAC-SHA256) of the resident ID number: finds the owner without decrypting.
    id_number_hash   BLOB NOT NULL UNIQUE,
    id_number_sealed BLOB NOT NULL,
    phone_sealed     BLOB NOT NULL,
    created_at_ms    INTEGER NOT NULL
);

CREATE TABLE bikes (
    bike_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tag_id           TEXT NOT NULL UNIQUE,
    plate            TEXT NOT NULL UNIQUE,
    owner_id         INTEGER NOT NULL REFERENCES owners (owner_id),
    make             TEXT NOT NULL,
    model            TEXT NOT NULL,
    color            TEXT NOT NULL,
    registered_by    TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL
);

CREATE TABLE theft_reports (
    report_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    bike_id         INTEGER NOT NULL REFERENCES bikes (bike_id),
    reported_by     TEXT NOT NULL,
    reported_at_ms  INTEGER NOT NULL,
    recovered_by    TEXT,
    recovered_at_ms INTEGER
);
-- At most one open theft report per bike.
CREATE UNIQUE INDEX theft_reports_open ON theft_reports (bike_id) WHERE recovered_at_ms IS NULL;

CREATE TABLE audit_log (
    audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL
);
