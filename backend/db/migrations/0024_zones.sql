-- Zones commanders draw on the map (a bridge, the county border, the station square): a named polygon as GeoJSON,
-- checked by backend.zones before it is stored. Every change bumps zones_revision in its transaction, so an
-- ingest worker's cached copy knows when to reload (one tiny read, only when a stolen chip is seen).
CREATE TABLE zones (
    zone_id     bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 80),
    geometry    jsonb NOT NULL CHECK (geometry->>'type' = 'Polygon'),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX zones_name ON zones (lower(btrim(name)));

CREATE TABLE zones_revision (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    revision  bigint NOT NULL
);
INSERT INTO zones_revision VALUES (true, 0);

-- A stolen bike's consecutive passages at two stations on either side of a zone's border: it entered or left the
-- zone, heading (a compass word) as the straight line between the two stations goes. crossed_at is interpolated
-- along that line between the two passages (time_basis says so); the zone's name is kept as it was then.
CREATE TABLE zone_crossings (
    crossing_id      bigserial PRIMARY KEY,
    alarm_id         bigint NOT NULL REFERENCES alarms ON DELETE CASCADE,
    tag_id           bigint NOT NULL,
    zone_id          bigint REFERENCES zones ON DELETE SET NULL,
    zone_name        text NOT NULL,
    direction        text NOT NULL CHECK (direction IN ('entered', 'left')),
    heading          text NOT NULL CHECK (heading IN ('north', 'northeast', 'east', 'southeast', 'south',
                                                      'southwest', 'west', 'northwest')),
    crossed_at       timestamptz NOT NULL,
    time_basis       text NOT NULL CHECK (time_basis IN ('interpolated', 'passage')),
    from_station_id  text NOT NULL,
    from_seen_at     timestamptz NOT NULL,
    to_station_id    text NOT NULL,
    to_seen_at       timestamptz NOT NULL,
    lat              double precision NOT NULL,
    lon              double precision NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    -- A passage judged twice (a redelivery, two workers) records its crossing once.
    UNIQUE (alarm_id, zone_name, direction, to_station_id, to_seen_at)
);
CREATE INDEX zone_crossings_alarm ON zone_crossings (alarm_id, crossed_at);
