-- An owner lets someone else (a family member) see where their bike is, through a link that expires and can be
-- withdrawn. Only the token's SHA-256 is kept: the link is shown once. A share belongs to the owner who made it and
-- ends by itself when the bike is no longer theirs.
CREATE TABLE bike_shares (
    share_id     bigserial PRIMARY KEY,
    bike_id      bigint NOT NULL REFERENCES bikes,
    owner_id     bigint NOT NULL REFERENCES owners,
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    label        text CHECK (length(label) <= 100),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX bike_shares_bike ON bike_shares (bike_id, owner_id, created_at DESC);
