-- Stations, the minimal registry (owner, bike, chip), theft reports and the hot list.

CREATE TABLE stations (
    station_id   text PRIMARY KEY CHECK (station_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name         text NOT NULL,
    lat          double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon          double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The latest retained status a station published (online/offline, counters).
CREATE TABLE station_status (
    station_id   text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('online', 'offline')),
    reported_at  timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now(),
    payload      jsonb NOT NULL
);

-- Road network used to draw maps without a tile server (GeoJSON LineStrings, lon/lat).
CREATE TABLE roads (
    road_id      bigserial PRIMARY KEY,
    name         text,
    geometry     jsonb NOT NULL
);

CREATE TABLE owners (
    owner_id     bigserial PRIMARY KEY,
    name         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bikes (
    bike_id      bigserial PRIMARY KEY,
    plate        text NOT NULL UNIQUE,
    owner_id     bigint NOT NULL REFERENCES owners,
    brand        text,
    colour       text,
    armed        boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A chip is bound to at most one bike and a bike carries at most one chip.
CREATE TABLE chips (
    tag_id       bigint PRIMARY KEY CHECK (tag_id BETWEEN 0 AND 4294967295),
    bike_id      bigint UNIQUE REFERENCES bikes,
    fitted_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE theft_reports (
    report_id     bigserial PRIMARY KEY,
    bike_id       bigint NOT NULL REFERENCES bikes,
    stolen_at     timestamptz NOT NULL,
    reported_at   timestamptz NOT NULL DEFAULT now(),
    place         text,
    circumstances text,
    police_report text,
    recovered_at  timestamptz
);
-- A bike has at most one open theft report.
CREATE UNIQUE INDEX theft_reports_one_open ON theft_reports (bike_id) WHERE recovered_at IS NULL;

-- Every published hot list, so its version is monotonic across backend workers.
CREATE TABLE hotlist_versions (
    version      bigserial PRIMARY KEY,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    tag_ids      bigint[] NOT NULL
);
