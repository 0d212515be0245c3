-- A batch's content, so that the same (station_id, batch_seq) with other content is seen as a conflict (kept in
-- rejected_messages with its raw bytes) rather than taken for a redelivery. A redelivered batch is byte for byte
-- the same: the gateway spools the payload once, with its sent_at, and resends those bytes.
-- NULL for the batches stored before this migration: a repeat of one of them is taken as a redelivery.
ALTER TABLE ingested_batches ADD COLUMN payload_sha256 bytea;

-- Why a message was refused, from a fixed set (backend.ingest.rejects); `reason` keeps the details.
-- NULL for the rows kept before this migration.
ALTER TABLE rejected_messages ADD COLUMN kind text CHECK (
    kind IN ('invalid', 'topic', 'station mismatch', 'unknown station', 'time window', 'conflict', 'database')
);
