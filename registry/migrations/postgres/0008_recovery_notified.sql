-- Owners' SMS (issue #18): a recovery's text to the owner is sent once the recovery is
-- committed; this marks the reports whose owner was told (or given up on). Reports
-- recovered before this column existed count as told.
ALTER TABLE theft_reports ADD COLUMN recovery_notified BIGINT NOT NULL DEFAULT 0;
UPDATE theft_reports SET recovery_notified = 1 WHERE recovered_at_ms IS NOT NULL;
CREATE INDEX theft_reports_to_notify ON theft_reports (report_id)
    WHERE recovered_at_ms IS NOT NULL AND recovery_notified = 0;
