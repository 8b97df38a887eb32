-- Registry: identities (readers, kiosks, API tokens), owners, bikes, tags, theft reports,
-- audit log.
CREATE TABLE readers (
    reader_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    lat           DOUBLE PRECISION NOT NULL,
    lon           DOUBLE PRECISION NOT NULL,
    -- The MQTT secret, sealed with the at-rest key (nonce || ciphertext).
    secret_sealed BYTEA NOT NULL,
    enabled       BIGINT NOT NULL DEFAULT 1,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE kiosks (
    kiosk_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Bearer tokens of kiosks and patrol units: only their SHA-256 is kept.
CREATE TABLE api_tokens (
    token_hash    BYTEA PRIMARY KEY,
    role          TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE owners (
    owner_id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             TEXT NOT NULL,
    -- Keyed hash (HMAC-SHA256) of the resident ID number: finds the owner without decrypting.
    id_number_hash   BYTEA NOT NULL UNIQUE,
    id_number_sealed BYTEA NOT NULL,
    phone_sealed     BYTEA NOT NULL,
    created_at_ms    BIGINT NOT NULL
);

CREATE TABLE bikes (
    bike_id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The bike's current tag (NULL once deregistered).
    tag_id             TEXT UNIQUE,
    plate              TEXT NOT NULL,
    owner_id           BIGINT NOT NULL REFERENCES owners (owner_id),
    make               TEXT NOT NULL,
    model              TEXT NOT NULL,
    color              TEXT NOT NULL,
    frame_number       TEXT NOT NULL,
    -- Argon2id PHC string of the owner's PIN; NULL until one is chosen (bulk imports).
    pin_hash           TEXT,
    pin_failures       BIGINT NOT NULL DEFAULT 0,
    pin_locked_until_ms BIGINT NOT NULL DEFAULT 0,
    armed              BIGINT NOT NULL DEFAULT 0,
    -- 'registered' or 'deregistered'.
    state              TEXT NOT NULL DEFAULT 'registered',
    -- The kiosk's idempotency key for RegisterBike, or the import file's line key.
    request_id         TEXT UNIQUE,
    registered_by      TEXT NOT NULL,
    registered_at_ms   BIGINT NOT NULL,
    deregistered_at_ms BIGINT
);
-- A plate belongs to at most one registered bike.
CREATE UNIQUE INDEX bikes_plate_registered ON bikes (plate) WHERE state = 'registered';
CREATE INDEX bikes_owner ON bikes (owner_id);

-- Every tag ever bound. A tag is bound to one bike, ever: a revoked tag is never re-bound.
CREATE TABLE tags (
    tag_id        TEXT PRIMARY KEY,
    bike_id       BIGINT NOT NULL REFERENCES bikes (bike_id),
    -- 'active' or 'revoked'.
    state         TEXT NOT NULL,
    bound_at_ms   BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    revoked_why   TEXT
);

CREATE TABLE theft_reports (
    report_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bike_id         BIGINT NOT NULL REFERENCES bikes (bike_id),
    stolen_at_ms    BIGINT NOT NULL,
    place           TEXT NOT NULL,
    notes           TEXT NOT NULL,
    reported_by     TEXT NOT NULL,
    reported_at_ms  BIGINT NOT NULL,
    recovered_by    TEXT,
    recovered_at_ms BIGINT
);
-- At most one open theft report per bike.
CREATE UNIQUE INDEX theft_reports_open ON theft_reports (bike_id) WHERE recovered_at_ms IS NULL;

CREATE TABLE audit_log (
    audit_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL
);
