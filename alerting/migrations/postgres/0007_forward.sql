-- Forwarding alerts to partner systems (issue #18): per target, the outbox cursor (the last
-- alert seq handled: delivered, left out by the target's filter, or dead-lettered) and the
-- lease of the node that delivers for it (one node per target at a time, so each alert goes
-- out once per target, not once per node).
CREATE TABLE forward_targets (
    target         TEXT PRIMARY KEY,
    cursor_seq     BIGINT NOT NULL,
    owner          TEXT NOT NULL DEFAULT '',
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    updated_at_ms  BIGINT NOT NULL
);

-- Alerts a target did not take within its give_up_after_s: kept for an operator to replay
-- (Admin.ReplayDeadLetters sets replay, and the target's worker sends them again).
CREATE TABLE forward_dead_letters (
    target       TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    alert_id     TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at_ms BIGINT NOT NULL,
    replay       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (target, seq)
);
