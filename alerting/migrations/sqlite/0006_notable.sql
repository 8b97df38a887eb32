-- The command center's panels (issue #17): escalations and hits an officer rejected as a
-- misread or a suspected clone (ALERT_KIND_HIT_REJECTED = 11), newest first, without
-- scanning the whole alert log.
CREATE INDEX alerts_notable ON alerts (seq) WHERE escalation > 0 OR kind = 11;
