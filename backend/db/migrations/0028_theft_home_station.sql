-- Each theft report keeps its bike's home station: the station where the bike's chip was seen most often in the 7
-- days before the theft (ties: the lowest station id), as the sightings stood when the report was filed. The results
-- page (backend/statistics.py) reads thefts by area from it: finding it per report when the page is asked cost one
-- probe of sightings per report, which TimescaleDB's run-time chunk exclusion made seconds for a year of reports.
ALTER TABLE theft_reports ADD COLUMN home_station_id text;

CREATE FUNCTION bikeguard_home_station(p_bike bigint, p_stolen timestamptz, p_reported timestamptz) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    chip bigint;
    home text;
BEGIN
    -- The chip the bike carried at the report: its first chip binding not ended before it.
    SELECT b.tag_id INTO chip FROM bike_bindings b
    WHERE b.bike_id = p_bike AND b.kind = 'chip' AND (b.valid_to IS NULL OR b.valid_to > p_reported)
    ORDER BY b.valid_from LIMIT 1;
    IF chip IS NULL THEN
        RETURN NULL;
    END IF;
    -- The bounds as literals: partitions and chunks outside them are left out when the probe is planned.
    EXECUTE format(
        'SELECT station_id FROM sightings WHERE tag_id = %s AND first_seen_at >= %L AND first_seen_at < %L'
        ' GROUP BY station_id ORDER BY count(*) DESC, station_id LIMIT 1',
        chip, p_stolen - interval '7 days', p_stolen
    ) INTO home;
    RETURN home;
END $$;

CREATE FUNCTION bikeguard_theft_reports_home() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.home_station_id := coalesce(NEW.home_station_id, bikeguard_home_station(NEW.bike_id, NEW.stolen_at, NEW.reported_at));
    RETURN NEW;
END $$;

CREATE TRIGGER theft_reports_home BEFORE INSERT ON theft_reports
    FOR EACH ROW EXECUTE FUNCTION bikeguard_theft_reports_home();

-- The reports filed before this migration, once.
UPDATE theft_reports SET home_station_id = bikeguard_home_station(bike_id, stolen_at, reported_at);
