-- Commissioning self-test runs as stations publish them on stations/{id}/selftest: every step as it completed,
-- then the run's summary. A redelivered step changes nothing (its key is the station, the run and its seq).

CREATE TABLE station_selftest_runs (
    station_id   text NOT NULL REFERENCES stations ON DELETE CASCADE,
    run_id       text NOT NULL CHECK (run_id ~ '^[0-9a-f]{8,32}$'),
    -- By the station's clock (which the run may prove wrong); received_at orders runs by ours.
    started_at   timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- Set once, by the summary: passed when no step failed.
    result       text CHECK (result IN ('passed', 'failed')),
    finished_at  timestamptz,
    steps_total  integer CHECK (steps_total BETWEEN 1 AND 99),
    counts       jsonb,
    PRIMARY KEY (station_id, run_id),
    CHECK ((result IS NULL) = (finished_at IS NULL) AND (result IS NULL) = (steps_total IS NULL))
);
CREATE INDEX station_selftest_runs_latest ON station_selftest_runs (station_id, received_at DESC);

CREATE TABLE station_selftest_steps (
    station_id       text NOT NULL,
    run_id           text NOT NULL,
    seq              integer NOT NULL CHECK (seq BETWEEN 1 AND 99),
    name             text NOT NULL,
    title            text NOT NULL DEFAULT '',
    status           text NOT NULL CHECK (status IN ('pass', 'warn', 'fail', 'skip')),
    message          text NOT NULL,
    advice           text NOT NULL DEFAULT '',
    rssi_dbm         smallint,
    noise_floor_dbm  smallint,
    elapsed_s        double precision NOT NULL DEFAULT 0,
    at               timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, run_id, seq),
    FOREIGN KEY (station_id, run_id) REFERENCES station_selftest_runs ON DELETE CASCADE
);
