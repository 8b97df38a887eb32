-- Canaries (Admin/AddCanary): tags whose sightings prove the whole path works, each with
-- the longest time allowed between two sightings.
CREATE TABLE canaries (
    tag_id        TEXT PRIMARY KEY,
    every_ms      BIGINT NOT NULL,
    note          TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL
);

-- A canary unit receives canary alerts and nothing else.
ALTER TABLE patrol_units ADD COLUMN canary BIGINT NOT NULL DEFAULT 0;
