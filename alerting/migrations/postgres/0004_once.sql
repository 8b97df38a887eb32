-- A sighting is alerted and stored once, however often its batch is processed: with NATS
-- JetStream a node can commit a batch's alerts and die before acknowledging it, and the
-- batch is then redelivered to another node.
--
-- `source` names the sighting and the rule that fired ("{reader}/{tag}/{seen_at_ms}/{kind}");
-- NULL for alerts that are not about one sighting (reader offline, canaries). NULLs never
-- collide in a unique index, on either backend.
ALTER TABLE alerts ADD COLUMN source TEXT;
CREATE UNIQUE INDEX alerts_source ON alerts (source);

-- A pass is one tag at one reader from its first read: the same (tag, first read, reader)
-- twice is the same pass written twice. The unique index replaces passes_tag_time (same
-- leading columns, so track queries keep their index).
DELETE FROM passes WHERE pass_id NOT IN (
    SELECT MIN(pass_id) FROM passes GROUP BY tag_id, first_seen_ms, reader_id
);
DROP INDEX passes_tag_time;
CREATE UNIQUE INDEX passes_once ON passes (tag_id, first_seen_ms, reader_id);
