-- Pass history: where each tag was seen. A pass is a reader's reads of one tag folded
-- together (first seen, last seen, reads, peak RSSI); ingest writes closed passes in
-- batches, Patrol.GetTrack reads them, and a background job deletes those older than the
-- retention.
CREATE TABLE passes (
    pass_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tag_id        TEXT NOT NULL,
    reader_id     TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    reads         BIGINT NOT NULL,
    peak_rssi_dbm BIGINT NOT NULL
);
CREATE INDEX passes_tag_time ON passes (tag_id, first_seen_ms);
CREATE INDEX passes_age ON passes (last_seen_ms);
