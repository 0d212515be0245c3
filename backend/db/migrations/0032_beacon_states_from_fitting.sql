-- A v2 chip's beacon state row exists from its fitting on, empty (counter NULL: never heard) until its first beacon
-- is accepted. A flush locks its chips' rows in tag order; a row that did not exist then was not locked, and its
-- insert at the write-back could wait for another worker that had locked it meanwhile while that worker waited for
-- a row the first held: PostgreSQL refused one of them as a deadlock (seen with two workers in bench/ingest.py,
-- on chips heard for the first time). With every row there before any beacon, each flush's locks are taken in
-- one order.
ALTER TABLE chip_beacon_states
    ALTER COLUMN counter DROP NOT NULL,
    ALTER COLUMN heard_at DROP NOT NULL,
    ALTER COLUMN station_id DROP NOT NULL,
    ALTER COLUMN "window" DROP NOT NULL,
    ALTER COLUMN payload DROP NOT NULL,
    ALTER COLUMN offset_lo_s DROP NOT NULL,
    ALTER COLUMN offset_hi_s DROP NOT NULL,
    ALTER COLUMN offset_at DROP NOT NULL,
    ADD CONSTRAINT chip_beacon_states_heard CHECK (
        counter IS NULL
        OR (heard_at IS NOT NULL AND station_id IS NOT NULL AND "window" IS NOT NULL AND payload IS NOT NULL
            AND offset_lo_s IS NOT NULL AND offset_hi_s IS NOT NULL AND offset_at IS NOT NULL)
    );

CREATE FUNCTION bikeguard_chip_key_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chip_beacon_states (tag_id) SELECT tag_id FROM fitted ORDER BY tag_id ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
-- Once per statement, so that a county's chips fitted by one COPY make their rows in one insert.
CREATE TRIGGER chip_keys_state AFTER INSERT ON chip_keys REFERENCING NEW TABLE AS fitted
    FOR EACH STATEMENT EXECUTE FUNCTION bikeguard_chip_key_state();

INSERT INTO chip_beacon_states (tag_id)
    SELECT tag_id FROM chip_keys WHERE retired_at IS NULL ORDER BY tag_id ON CONFLICT DO NOTHING;
