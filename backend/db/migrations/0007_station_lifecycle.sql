-- The station registry: where and how a station is mounted, its radio settings, how often it should report,
-- and its life cycle planned → installed → commissioned → active → decommissioned, with who moved it when.

ALTER TABLE stations
    ADD COLUMN address              text,
    ADD COLUMN mount_height_m       double precision CHECK (mount_height_m > 0 AND mount_height_m <= 100),
    ADD COLUMN antenna_bearing_deg  double precision CHECK (antenna_bearing_deg >= 0 AND antenna_bearing_deg < 360),
    ADD COLUMN radio_settings       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(radio_settings) = 'object'),
    ADD COLUMN heartbeat_interval_s integer NOT NULL DEFAULT 30 CHECK (heartbeat_interval_s BETWEEN 1 AND 86400),
    -- Stations registered before the life cycle existed are already in service.
    ADD COLUMN lifecycle            text NOT NULL DEFAULT 'active'
        CHECK (lifecycle IN ('planned', 'installed', 'commissioned', 'active', 'decommissioned')),
    ADD COLUMN lifecycle_changed_at timestamptz NOT NULL DEFAULT now();

ALTER TABLE stations ALTER COLUMN lifecycle SET DEFAULT 'planned';

-- Every life-cycle step of every station, appended, never updated.
CREATE TABLE station_lifecycle_history (
    history_id   bigserial PRIMARY KEY,
    station_id   text NOT NULL REFERENCES stations ON DELETE CASCADE,
    from_state   text,
    to_state     text NOT NULL,
    changed_by   text NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    note         text
);
CREATE INDEX station_lifecycle_history_station ON station_lifecycle_history (station_id, changed_at);
