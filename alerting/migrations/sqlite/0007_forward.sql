-- Forwarding alerts to partner systems (issue #18): per target, the outbox cursor (the last
-- alert seq handled: delivered, left out by the target's filter, or dead-lettered) and the
-- lease of the node that delivers for it (one node per target at a time, so each alert goes
-- out once per target, not once per node).
CREATE TABLE forward_targets (
    target         TEXT PRIMARY KEY,
    cursor_seq     INTEGER NOT NULL,
    owner          TEXT NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    updated_at_ms  INTEGER NOT NULL
);

-- Alerts a target did not take within its give_up_after_s: kept for an operator to replay
-- (Admin.ReplayDeadLetters sets replay, and the target's worker sends them again).
CREATE TABLE forward_dead_letters (
    target       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    alert_id     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at_ms INTEGER NOT NULL,
    replay       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, seq)
);
