-- Each reader's highest batch seq that was processed, stored in batches (not per message) so
-- that a batch captured off the wire cannot be replayed as new after a restart: at start the
-- seq window of each reader begins above it.
CREATE TABLE reader_seqs (
    reader_id     TEXT PRIMARY KEY,
    highest_seq   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
