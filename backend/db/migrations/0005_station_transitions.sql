-- Where bikes go next: counts and travel times of moves between stations, refreshed from recent passages.

CREATE TABLE station_transitions (
    from_station     text NOT NULL,
    to_station       text NOT NULL,
    moves            integer NOT NULL,
    median_travel_s  double precision NOT NULL,
    p90_travel_s     double precision NOT NULL,
    refreshed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_station, to_station)
);

-- Rebuild from the last `days` of passages: each tag's consecutive passages at two different stations,
-- no more than max_gap apart (a longer gap is not one trip), become one move.
CREATE FUNCTION bikeguard_refresh_transitions(days integer, max_gap interval) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM station_transitions;
    INSERT INTO station_transitions (from_station, to_station, moves, median_travel_s, p90_travel_s)
    SELECT from_station, to_station, count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY travel_s),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY travel_s)
    FROM (
        SELECT station_id AS from_station,
               lead(station_id) OVER w AS to_station,
               extract(epoch FROM lead(first_seen_at) OVER w - last_seen_at) AS travel_s
        FROM sightings
        WHERE first_seen_at >= now() - make_interval(days => days)
        WINDOW w AS (PARTITION BY tag_id ORDER BY first_seen_at)
    ) m
    WHERE to_station IS NOT NULL AND to_station <> from_station
      AND travel_s >= 0 AND travel_s <= extract(epoch FROM max_gap)
    GROUP BY from_station, to_station;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
