-- Kiosk and patrol-unit tokens may expire (NULL: they do not); revoked ones keep their row
-- (revoked_at_ms) for the audit trail.
ALTER TABLE api_tokens ADD COLUMN expires_at_ms BIGINT;
CREATE INDEX api_tokens_holder ON api_tokens (role, principal_id);
