-- Each registered chip's latest passage as the ingest saw it: what the cloned-chip check compares a new sighting
-- with, by primary key, instead of searching the sightings table for the chip's previous passage.
-- UNLOGGED: it is rebuilt by the traffic itself; after a crash it starts empty and the check misses at most each
-- chip's first sighting. Only the primary's ingest writes it.
CREATE UNLOGGED TABLE chip_positions (
    tag_id        bigint PRIMARY KEY,
    station_id    text NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
) WITH (fillfactor = 70);
