-- Sightings (one row per passage of a tag at a station), batch bookkeeping, rejected messages.
-- A TimescaleDB hypertable or daily native range partitions, as backend.db.storage chose for this database (it
-- refuses a server where TimescaleDB is installed but not preloaded rather than guess).

DO $$
BEGIN
    IF current_setting('bikeguard.storage_engine', true) = 'timescaledb' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        CREATE TABLE sightings (
            first_seen_at  timestamptz NOT NULL,
            last_seen_at   timestamptz NOT NULL,
            station_id     text NOT NULL,
            tag_id         bigint NOT NULL,
            beacons        integer NOT NULL,
            peak_rssi_dbm  smallint NOT NULL,
            antenna        smallint NOT NULL,
            flags          smallint NOT NULL,
            batch_seq      bigint NOT NULL
        );
        PERFORM create_hypertable('sightings', by_range('first_seen_at', INTERVAL '1 day'));
    ELSE
        CREATE TABLE sightings (
            first_seen_at  timestamptz NOT NULL,
            last_seen_at   timestamptz NOT NULL,
            station_id     text NOT NULL,
            tag_id         bigint NOT NULL,
            beacons        integer NOT NULL,
            peak_rssi_dbm  smallint NOT NULL,
            antenna        smallint NOT NULL,
            flags          smallint NOT NULL,
            batch_seq      bigint NOT NULL
        ) PARTITION BY RANGE (first_seen_at);
        -- Rows outside the days created ahead land here rather than being refused.
        CREATE TABLE sightings_default PARTITION OF sightings DEFAULT;
    END IF;
END
$$;

-- "Trajectory of one tag over a time range" and "what passed station S in a time range".
CREATE INDEX sightings_tag_time ON sightings (tag_id, first_seen_at DESC);
CREATE INDEX sightings_station_time ON sightings (station_id, first_seen_at DESC);

-- (station_id, batch_seq) identifies a batch: a redelivered batch is recognised and changes nothing.
CREATE TABLE ingested_batches (
    station_id   text NOT NULL,
    batch_seq    bigint NOT NULL,
    sent_at      timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    sightings    integer NOT NULL,
    PRIMARY KEY (station_id, batch_seq)
);

-- Anything that failed validation, with its raw bytes and the reason; never silently dropped.
CREATE TABLE rejected_messages (
    rejected_id  bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    reason       text NOT NULL,
    raw          bytea NOT NULL
);

-- Urgent events a station sends at once (hot-list hit, tamper), kept as received.
CREATE TABLE station_alerts (
    station_id   text NOT NULL,
    kind         text NOT NULL,
    tag_id       bigint NOT NULL,
    seen_at      timestamptz NOT NULL,
    rssi_dbm     smallint NOT NULL,
    antenna      smallint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, tag_id, kind, seen_at)
);

-- One time-bucket function for both paths (date_bin works on PostgreSQL 14+ and TimescaleDB).
CREATE FUNCTION bikeguard_bucket(width interval, ts timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin(width, ts, TIMESTAMPTZ '2000-01-01 00:00:00+00');

-- Create the daily partitions for [from_day, to_day]; a no-op on a hypertable (TimescaleDB makes chunks).
-- Rows already sitting in the default partition for such a day are moved into the new partition.
CREATE FUNCTION bikeguard_ensure_partitions(from_day date, to_day date) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass) THEN
        RETURN 0;
    END IF;
    FOR d IN SELECT generate_series(from_day, to_day, interval '1 day')::date LOOP
        part := 'sightings_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        CREATE TEMP TABLE IF NOT EXISTS _bikeguard_moved (LIKE sightings) ON COMMIT DROP;
        WITH moved AS (
            DELETE FROM sightings_default WHERE first_seen_at >= lo AND first_seen_at < hi RETURNING *
        ) INSERT INTO _bikeguard_moved SELECT * FROM moved;
        EXECUTE format('CREATE TABLE %I PARTITION OF sightings FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        INSERT INTO sightings SELECT * FROM _bikeguard_moved;
        TRUNCATE _bikeguard_moved;
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Retention: drop whole days older than keep_days (partitions, or chunks on TimescaleDB), never DELETE.
CREATE FUNCTION bikeguard_drop_old_sightings(keep_days integer) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                          - make_interval(days => keep_days);
    part record;
    dropped integer := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass) THEN
        EXECUTE 'SELECT count(*) FROM drop_chunks(''sightings'', older_than => $1)' INTO dropped USING cutoff;
        RETURN dropped;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'sightings'::regclass AND c.relname ~ '^sightings_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < cutoff::date
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
