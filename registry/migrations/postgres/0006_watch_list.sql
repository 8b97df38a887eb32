-- Watch lists (布控, issue #17): police watch a plate or a tag without a theft report. An
-- entry names a plate or a tag (the other is ''), ends by itself at expires_at_ms, and is
-- covert when only command centers may hear of its hits. A removed or expired entry keeps
-- its row (removed_by 'expired' for the latter), for the record.
CREATE TABLE watch_entries (
    entry_id      TEXT PRIMARY KEY,
    plate         TEXT NOT NULL,
    tag_id        TEXT NOT NULL,
    -- 1 normal, 2 urgent, 3 critical.
    priority      BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    case_number   TEXT NOT NULL,
    covert        BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    added_by      TEXT NOT NULL,
    added_at_ms   BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    removed_by    TEXT,
    removed_at_ms BIGINT
);
CREATE INDEX watch_entries_plate ON watch_entries (plate) WHERE removed_at_ms IS NULL;
CREATE INDEX watch_entries_tag ON watch_entries (tag_id) WHERE removed_at_ms IS NULL;
