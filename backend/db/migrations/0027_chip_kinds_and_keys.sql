-- Version 2 chips (issue 17): a chip is of a kind, 'v1' (beacons its tag id in the clear) or 'v2' (beacons ephemeral
-- ids derived from a 128-bit key written at fitting). A v2 chip keeps its printed 32-bit tag id as the registry's
-- identity of it; it just never beacons it. Chips registered before are v1.
ALTER TABLE chips ADD COLUMN kind text NOT NULL DEFAULT 'v1' CHECK (kind IN ('v1', 'v2'));

-- A v2 chip's key, encrypted by backend.vault (AES-256-GCM, the tag id as associated data, so a row moved to another
-- chip does not decrypt), with the key check value the programming cable read back. A row is retired with its chip
-- and its ciphertext erased then: a retired chip's key resolves nothing any more, so nothing keeps it.
CREATE TABLE chip_keys (
    tag_id          bigint PRIMARY KEY REFERENCES chips,
    key_ciphertext  bytea CHECK (key_ciphertext IS NULL OR octet_length(key_ciphertext) = 1 + 12 + 16 + 16),
    key_check       bytea NOT NULL CHECK (octet_length(key_check) = 3),
    written_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    CONSTRAINT chip_keys_retired_erased CHECK ((retired_at IS NULL) = (key_ciphertext IS NOT NULL))
);
-- Nobody but the schema's owner and the application role (granted by `bikeguard db migrate`) reads keys.
REVOKE ALL ON chip_keys FROM PUBLIC;

-- The resolution reads the active keys: keep that an index scan however many chips were ever retired.
CREATE INDEX chip_keys_active ON chip_keys (tag_id) WHERE retired_at IS NULL;

-- Every way a chip is retired (replaced, its bike deregistered) retires its key in the same transaction.
CREATE FUNCTION bikeguard_chip_key_retire() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chip_keys SET retired_at = NEW.retired_at, key_ciphertext = NULL
        WHERE tag_id = NEW.tag_id AND retired_at IS NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER chips_retire_key AFTER UPDATE OF retired_at ON chips
    FOR EACH ROW WHEN (NEW.retired_at IS NOT NULL AND OLD.retired_at IS NULL)
    EXECUTE FUNCTION bikeguard_chip_key_retire();
