-- Rejected messages (issue 11 #14): the raw bytes are kept up to BIKEGUARD_INGEST_REJECT_MAX_RAW_BYTES, with the
-- length the message had; rows older than BIKEGUARD_REJECTED_RETENTION_DAYS are deleted by the maintenance task.
-- raw_bytes is NULL for the rows kept (whole) before this migration.
ALTER TABLE rejected_messages ADD COLUMN raw_bytes integer;
CREATE INDEX rejected_messages_received ON rejected_messages (received_at);
