-- Registry: identities (readers, kiosks, API tokens), owners, bikes, theft reports, audit log.
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
    bike_id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tag_id           TEXT NOT NULL UNIQUE,
    plate            TEXT NOT NULL UNIQUE,
    owner_id         BIGINT NOT NULL REFERENCES owners (owner_id),
    make             TEXT NOT NULL,
    model            TEXT NOT NULL,
    color            TEXT NOT NULL,
    registered_by    TEXT NOT NULL,
    registered_at_ms BIGINT NOT NULL
);

CREATE TABLE theft_reports (
    report_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bike_id         BIGINT NOT NULL REFERENCES bikes (bike_id),
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
