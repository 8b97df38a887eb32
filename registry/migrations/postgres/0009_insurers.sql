-- Insurers (issue #18): their tokens read signed claim records of thefts, nothing else.
CREATE TABLE insurers (
    insurer_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
