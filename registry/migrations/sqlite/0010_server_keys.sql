-- Keys every node of a deployment must share (issue #18: the claim-signing key), sealed
-- with the at-rest key like owners' data. The first node to start creates each one.
CREATE TABLE server_keys (
    name          TEXT PRIMARY KEY,
    sealed        BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
