-- Registry: identities (readers, kiosks, API tokens), owners, bikes, tags, theft reports,
-- audit log.
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
    bike_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The bike's current tag (NULL once deregistered).
    tag_id             TEXT UNIQUE,
    plate              TEXT NOT NULL,
    owner_id           INTEGER NOT NULL REFERENCES owners (owner_id),
    make               TEXT NOT NULL,
    model              TEXT NOT NULL,
    color              TEXT NOT NULL,
    frame_number       TEXT NOT NULL,
    -- Argon2id PHC string of the owner's PIN; NULL until one is chosen (bulk imports).
    pin_hash           TEXT,
    pin_failures       INTEGER NOT NULL DEFAULT 0,
    pin_locked_until_ms INTEGER NOT NULL DEFAULT 0,
    armed              INTEGER NOT NULL DEFAULT 0,
    -- 'registered' or 'deregistered'.
    state              TEXT NOT NULL DEFAULT 'registered',
    -- The kiosk's idempotency key for RegisterBike, or the import file's line key.
    request_id         TEXT UNIQUE,
    registered_by      TEXT NOT NULL,
    registered_at_ms   INTEGER NOT NULL,
    deregistered_at_ms INTEGER
);
-- A plate belongs to at most one registered bike.
CREATE UNIQUE INDEX bikes_plate_registered ON bikes (plate) WHERE state = 'registered';
CREATE INDEX bikes_owner ON bikes (owner_id);

-- Every tag ever bound. A tag is bound to one bike, ever: a revoked tag is never re-bound.
CREATE TABLE tags (
    tag_id        TEXT PRIMARY KEY,
    bike_id       INTEGER NOT NULL REFERENCES bikes (bike_id),
    -- 'active' or 'revoked'.
    state         TEXT NOT NULL,
    bound_at_ms   INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    revoked_why   TEXT
);

CREATE TABLE theft_reports (
    report_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    bike_id         INTEGER NOT NULL REFERENCES bikes (bike_id),
    stolen_at_ms    INTEGER NOT NULL,
    place           TEXT NOT NULL,
    notes           TEXT NOT NULL,
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
