-- Alarms: one open alarm per (kind, subject); new evidence updates it instead of adding another.

CREATE TABLE alarms (
    alarm_id         bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('stolen_chip_seen', 'armed_bike_moving', 'tamper',
                                                   'low_battery', 'chip_cloned', 'station_offline')),
    severity         text NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    state            text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acknowledged', 'cleared')),
    subject          text NOT NULL,            -- 'tag:0A1B2C3D' or 'station:st-001'
    tag_id           bigint,
    bike_id          bigint REFERENCES bikes,
    station_id       text,                     -- where it was last seen
    first_seen_at    timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    sightings        integer NOT NULL DEFAULT 1,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    assignee         text,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    cleared_by       text,
    cleared_at       timestamptz
);
CREATE UNIQUE INDEX alarms_one_open ON alarms (kind, subject) WHERE state <> 'cleared';
CREATE INDEX alarms_open_recent ON alarms (last_seen_at DESC) WHERE state <> 'cleared';
