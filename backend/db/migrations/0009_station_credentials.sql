-- Each station's MQTT password, as the Mosquitto "$7$" hash only (the clear password is shown once, never stored).
-- Rotation revokes the current row and adds a new one, so who issued and who revoked which password stays known.

CREATE TABLE station_credentials (
    credential_id  bigserial PRIMARY KEY,
    station_id     text NOT NULL REFERENCES stations ON DELETE CASCADE,
    password_hash  text NOT NULL CHECK (password_hash ~ '^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$'),
    issued_by      text NOT NULL,
    issued_at      timestamptz NOT NULL DEFAULT now(),
    revoked_by     text,
    revoked_at     timestamptz,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
-- At most one current password per station.
CREATE UNIQUE INDEX station_credentials_current ON station_credentials (station_id) WHERE revoked_at IS NULL;
CREATE INDEX station_credentials_station ON station_credentials (station_id, issued_at);
