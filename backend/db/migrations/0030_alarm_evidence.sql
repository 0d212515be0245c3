-- What proves a v2 chip cloned (issue 17): each replayed or forged beacon's evidence, kept with the alarm it raised
-- (the offending hearing and the chip's earlier one: stations, times, counters, windows, bytes on the air; never a
-- key), so that police read it with the alarm instead of in the backend's log.
CREATE TABLE alarm_evidence (
    evidence_id  bigserial PRIMARY KEY,
    alarm_id     bigint NOT NULL REFERENCES alarms ON DELETE CASCADE,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    evidence     jsonb NOT NULL
);
CREATE INDEX alarm_evidence_alarm ON alarm_evidence (alarm_id, evidence_id);
