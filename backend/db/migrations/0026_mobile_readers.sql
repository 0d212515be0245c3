-- Mobile readers (issue 16): a reader in a patrol car or a handheld is a station without a fixed place. Its gateway
-- reads a GPS receiver and each sighting (and hot-list alert) carries where the reader was and the fix's time.
--
-- A mobile station's lat/lon are its last known position (position_at: the fix they came from), moved on by the ingest
-- as its sightings arrive; a fixed station's never move and have no position_at.
ALTER TABLE stations
    ADD COLUMN mobile      boolean NOT NULL DEFAULT false,
    ADD COLUMN position_at timestamptz,
    ADD CONSTRAINT stations_position_at_only_mobile CHECK (mobile OR position_at IS NULL);

-- The reader's position at the sighting: nullable columns without a default, so the same statement works on plain
-- PostgreSQL's partitions and on a TimescaleDB hypertable with compression enabled (migration 0018), where adding a
-- column is a catalogue change and rewrites no chunk. Null for fixed stations (their place is the station's) and for a
-- mobile reader's sighting without a GPS fix. The bounds are the wire format's (protocol.messages.ReaderPosition),
-- checked where payloads enter the backend: no CHECK here, which a compressed hypertable would refuse.
ALTER TABLE sightings
    ADD COLUMN reader_lat    double precision,
    ADD COLUMN reader_lon    double precision,
    ADD COLUMN reader_fix_at timestamptz;

-- The same on a station's urgent alerts, and on the alarm: where the chip was when the patrol car's reader heard it
-- (the officer's screen shows the alarm there at once, not at the car's later position).
ALTER TABLE station_alerts
    ADD COLUMN reader_lat    double precision,
    ADD COLUMN reader_lon    double precision,
    ADD COLUMN reader_fix_at timestamptz;

ALTER TABLE alarms
    ADD COLUMN reader_lat double precision,
    ADD COLUMN reader_lon double precision,
    ADD CONSTRAINT alarms_reader_position_both CHECK ((reader_lat IS NULL) = (reader_lon IS NULL));

-- Trajectories, a bike's passages and a chip's last sighting now place a mobile reader's passage at the reader's
-- position: the covering index of migration 0019 carries it too, so they stay index-only scans. A fixed station's
-- row holds nulls there (a bit each in the tuple's null bitmap). Built before the old one is dropped, as in 0019.
CREATE INDEX sightings_tag_time_covering_positions ON sightings (tag_id, first_seen_at DESC)
    INCLUDE (station_id, last_seen_at, reader_lat, reader_lon);
DROP INDEX sightings_tag_time_covering;
