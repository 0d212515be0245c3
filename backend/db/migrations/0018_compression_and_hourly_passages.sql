-- TimescaleDB used as it is meant (issue 13), and the same answers on plain PostgreSQL.
--
-- Compression (TimescaleDB): a day's chunk is stored as one compressed batch per tag (segment by tag_id, newest
-- first), so one bike's trajectory over a day reads one batch; the age at which chunks are compressed, and retention,
-- are policies set from the settings by backend.db.storage after every migration.
--
-- station_passages_hourly (station_id, hour, passages): passages per station per hour, for station health's "usual"
-- rate and for statistics. On TimescaleDB a continuous aggregate with real-time aggregation (hours not yet
-- materialised are counted from sightings when read), refreshed by a policy job. On plain PostgreSQL the same view
-- over a table the backend's maintenance refreshes (bikeguard_refresh_passages_hourly) plus, beyond the table's
-- watermark, the count from sightings: a refreshed materialized view without the full recount each refresh.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass) THEN
        ALTER TABLE sightings SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'tag_id',
            timescaledb.compress_orderby = 'first_seen_at DESC'
        );
        EXECUTE $view$
            CREATE MATERIALIZED VIEW station_passages_hourly
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT station_id, time_bucket(INTERVAL '1 hour', first_seen_at) AS hour, count(*) AS passages
            FROM sightings GROUP BY station_id, time_bucket(INTERVAL '1 hour', first_seen_at)
            WITH NO DATA
        $view$;
        -- Hours up to three days back are recounted when late sightings arrive (a station's spool after an outage);
        -- the newest hour is never materialised (real-time aggregation counts it from sightings when read).
        PERFORM add_continuous_aggregate_policy('station_passages_hourly',
            start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
            schedule_interval => INTERVAL '30 minutes');
    ELSE
        CREATE TABLE station_passages_hourly_counted (
            station_id  text NOT NULL,
            hour        timestamptz NOT NULL,
            passages    bigint NOT NULL,
            PRIMARY KEY (station_id, hour)
        );
        CREATE INDEX station_passages_hourly_counted_hour ON station_passages_hourly_counted (hour);
        -- Hours before counted_until are in the table; later ones are counted from sightings when read.
        CREATE TABLE station_passages_hourly_watermark (
            only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            counted_until  timestamptz NOT NULL
        );
        CREATE VIEW station_passages_hourly AS
            SELECT station_id, hour, passages FROM station_passages_hourly_counted
            UNION ALL
            SELECT station_id, bikeguard_bucket(INTERVAL '1 hour', first_seen_at) AS hour, count(*) AS passages
            FROM sightings
            WHERE first_seen_at >= coalesce((SELECT counted_until FROM station_passages_hourly_watermark),
                                            '-infinity'::timestamptz)
            GROUP BY 1, 2;
    END IF;
END
$$;

-- Plain PostgreSQL: count the hours from `lookback` before the watermark (all of them the first time) up to the
-- hour before the current one into the table, and move the watermark there. Runs with its owner's rights for the backend's
-- maintenance (the application role reads the counts, never writes them); on TimescaleDB the policy job does this.
CREATE FUNCTION bikeguard_refresh_passages_hourly(lookback interval) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    since timestamptz;
    -- The last full hour stays counted from sightings when read, as on TimescaleDB (end_offset): batches still
    -- on their way for it are not missed until the next refresh.
    until timestamptz := bikeguard_bucket(INTERVAL '1 hour', now() - INTERVAL '1 hour');
    counted integer;
BEGIN
    IF to_regclass('station_passages_hourly_watermark') IS NULL THEN
        RETURN 0;  -- a hypertable: the continuous aggregate's policy refreshes it
    END IF;
    -- One refresh at a time: two would count the same hours twice.
    LOCK TABLE station_passages_hourly_watermark IN EXCLUSIVE MODE;
    since := coalesce((SELECT counted_until FROM station_passages_hourly_watermark) - lookback, '-infinity');
    DELETE FROM station_passages_hourly_counted WHERE hour >= since;
    INSERT INTO station_passages_hourly_counted (station_id, hour, passages)
        SELECT station_id, bikeguard_bucket(INTERVAL '1 hour', first_seen_at), count(*)
        FROM sightings WHERE first_seen_at >= since AND first_seen_at < until
        GROUP BY 1, 2;
    GET DIAGNOSTICS counted = ROW_COUNT;
    -- Hours from here on are counted from sightings when read (also after a clock set back).
    INSERT INTO station_passages_hourly_watermark (counted_until) VALUES (until)
        ON CONFLICT (only_row) DO UPDATE SET counted_until = excluded.counted_until;
    RETURN counted;
END
$$;
-- As for the maintenance functions of 0016: a fixed search path with pg_temp last.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION bikeguard_refresh_passages_hourly(interval) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
REVOKE EXECUTE ON FUNCTION bikeguard_refresh_passages_hourly(interval) FROM PUBLIC;
