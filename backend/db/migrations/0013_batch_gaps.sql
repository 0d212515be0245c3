-- Gaps in a station's batch_seqs (backend.ingest.gaps): seqs are contiguous per station, so a missing one is a
-- batch the backend never stored. The gap check advances each station's mark over ingested_batches instead of
-- scanning it, records the holes it passes as open gaps, asks the station for them, and closes them: filled (the
-- batch came, and the gap's rows go) or lost (the station no longer holds it, with its reason).

-- Every seq of the station up to checked_through is stored, or in batch_gaps. batches_recovered: batches that came
-- only after they were asked for (the installer sees it; the lost ones are batch_gaps' lost rows).
CREATE TABLE batch_seq_marks (
    station_id        text PRIMARY KEY,
    checked_through   bigint NOT NULL CHECK (checked_through >= -1),
    batches_recovered bigint NOT NULL DEFAULT 0
);

-- What was stored before this migration is taken as checked: gaps are looked for from here on. A station's mark
-- starts below its first stored batch (a spool starts its seqs at the clock in milliseconds), so a station without
-- batches yet gets its mark with its first one.
INSERT INTO batch_seq_marks (station_id, checked_through)
SELECT s.station_id, f.last FROM stations s
CROSS JOIN LATERAL (SELECT max(b.batch_seq) AS last FROM ingested_batches b WHERE b.station_id = s.station_id) f
WHERE f.last IS NOT NULL;

-- A run of missing seqs (first_seq to last_seq, both included). Open: not yet stored, asked for once noticed_at is
-- older than the grace period (requests, last_request_at). Lost: the station said it no longer holds them (reason,
-- from its answer; closed_at). A not_issued run was never given out by the station's spool: it was replaced, and
-- whatever the old spool had not sent is lost, how many batches unknown (the new spool starts at the clock). A filled part of an open gap is cut out of it and counted in batch_seq_marks.
CREATE TABLE batch_gaps (
    gap_id          bigserial PRIMARY KEY,
    station_id      text NOT NULL,
    first_seq       bigint NOT NULL CHECK (first_seq >= 0),
    last_seq        bigint NOT NULL CHECK (last_seq >= first_seq),
    noticed_at      timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'lost')),
    requests        integer NOT NULL DEFAULT 0,
    last_request_at timestamptz,
    closed_at       timestamptz,
    reason          text CHECK (reason IN ('dropped', 'not_issued', 'not_held')),
    CHECK ((state = 'open') = (closed_at IS NULL) AND (state = 'lost') = (reason IS NOT NULL))
);
CREATE INDEX batch_gaps_open ON batch_gaps (station_id, first_seq) WHERE state = 'open';
CREATE INDEX batch_gaps_lost ON batch_gaps (station_id, closed_at) WHERE state = 'lost';
