-- Version 2 chips (issue 17): what the ingest knows of each v2 chip's beacons, shared by every ingest worker. A
-- replay is a genuine beacon whose counter does not move forward; the worker that hears it must compare it with
-- the highest counter any worker accepted, so that state lives here and not in one worker's memory. A flush with
-- v2 beacons locks the rows of the chips it resolves (in tag order) and writes them back in its own transaction.
CREATE TABLE chip_beacon_states (
    tag_id       bigint PRIMARY KEY REFERENCES chips,
    counter      bigint NOT NULL CHECK (counter BETWEEN 0 AND 4294967295),  -- the highest accepted
    heard_at     timestamptz NOT NULL,  -- when the beacon with that counter was heard
    station_id   text NOT NULL,         -- and by which station (no foreign key: evidence outlives a station)
    "window"     bigint NOT NULL,       -- the window it resolved in
    payload      bytea NOT NULL CHECK (octet_length(payload) = 18),  -- its bytes on the air, for a replay's evidence
    -- The chip's clock minus true time lies in [offset_lo_s, offset_hi_s] as of offset_at (backend.resolution).
    offset_lo_s  double precision NOT NULL,
    offset_hi_s  double precision NOT NULL,
    offset_at    timestamptz NOT NULL
);
REVOKE ALL ON chip_beacon_states FROM PUBLIC;

-- The ingest picks up chips fitted or retired since it last looked without reading every key.
CREATE INDEX chip_keys_changed ON chip_keys (greatest(written_at, retired_at));
