-- The sightings' maintenance functions (0016), one caller at a time. Two callers creating partitions at once (two
-- backends' storage maintenance, or one and a migration) each took a row lock on sightings_default (moving its rows
-- of the day) and then waited for the other's to create the day's partition, which needs that table exclusively:
-- PostgreSQL refused one of them as a deadlock. Now each waits for a transaction-level advisory lock first. The
-- functions are otherwise as 0016 made them; CREATE OR REPLACE keeps their owner and grants, and their search_path
-- is set again as 0016 set it.

CREATE OR REPLACE FUNCTION bikeguard_ensure_partitions(from_day date, to_day date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    -- The sightings' maintenance lock: one caller at a time (the head of this file says why).
    PERFORM pg_advisory_xact_lock(2062053729);
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
        ) INSERT INTO pg_temp._bikeguard_moved SELECT * FROM moved;
        EXECUTE format('CREATE TABLE %I PARTITION OF sightings FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        INSERT INTO sightings SELECT * FROM pg_temp._bikeguard_moved;
        TRUNCATE pg_temp._bikeguard_moved;
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE OR REPLACE FUNCTION bikeguard_drop_old_sightings(keep_days integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    cutoff timestamptz;
    part record;
    dropped integer := 0;
BEGIN
    -- The sightings' maintenance lock: one caller at a time (the head of this file says why).
    PERFORM pg_advisory_xact_lock(2062053729);
    IF keep_days IS NULL OR keep_days < 1 THEN
        RAISE EXCEPTION 'retention must keep at least 1 day of sightings, not %', keep_days;
    END IF;
    cutoff := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(days => keep_days);
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

DO $$
DECLARE
    schemas text := format('%I', current_schema());
    timescale name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                       WHERE e.extname = 'timescaledb');
BEGIN
    IF timescale IS NOT NULL AND timescale <> current_schema() THEN
        schemas := schemas || format(', %I', timescale);
    END IF;
    EXECUTE format('ALTER FUNCTION bikeguard_ensure_partitions(date, date) SET search_path = %s, pg_temp', schemas);
    EXECUTE format('ALTER FUNCTION bikeguard_drop_old_sightings(integer) SET search_path = %s, pg_temp', schemas);
END
$$;
