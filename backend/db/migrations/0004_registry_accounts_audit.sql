-- The full registry (owners with identity, bikes with frame/motor numbers, chip life cycle), the
-- history of every binding, certificates, accounts and sessions, and the append-only audit log.
--
-- The current state stays where the ingest reads it (bikes.plate, bikes.owner_id, chips.bike_id, each
-- with its one-to-one constraint); triggers write every change of it into bike_bindings, with who made
-- it (the transaction's bikeguard.actor setting) and why (bikeguard.reason), so history cannot be skipped.

-- Owners: identity. The resident ID number is stored encrypted, with a keyed hash for exact lookup.
ALTER TABLE owners
    ADD COLUMN id_number_hash bytea,
    ADD COLUMN id_number_enc  bytea,
    ADD COLUMN mobile         text,
    ADD COLUMN address        text,
    ADD COLUMN created_by     text;
CREATE UNIQUE INDEX owners_id_number_hash ON owners (id_number_hash);
-- Owners registered from now on carry their identity (rows from before this migration may not).
ALTER TABLE owners ADD CONSTRAINT owners_identity_required
    CHECK (id_number_hash IS NOT NULL AND id_number_enc IS NOT NULL AND mobile IS NOT NULL
           AND address IS NOT NULL) NOT VALID;

-- Bikes: what identifies one, and its status. A deregistered bike gives up its plate.
ALTER TABLE bikes
    ALTER COLUMN plate DROP NOT NULL,
    ADD COLUMN frame_number    text,
    ADD COLUMN motor_number    text,
    ADD COLUMN model           text,
    ADD COLUMN status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'scrapped', 'exported')),
    ADD COLUMN deregistered_at timestamptz,
    ADD COLUMN created_by      text,
    ADD CONSTRAINT bikes_active_has_plate CHECK (status <> 'active' OR plate IS NOT NULL),
    ADD CONSTRAINT bikes_deregistered_has_no_plate CHECK (status = 'active' OR plate IS NULL);
ALTER TABLE bikes ADD CONSTRAINT bikes_frame_number_required CHECK (frame_number IS NOT NULL) NOT VALID;
CREATE UNIQUE INDEX bikes_frame_number_active ON bikes (frame_number) WHERE status = 'active';
CREATE UNIQUE INDEX bikes_motor_number_active ON bikes (motor_number) WHERE status = 'active';
CREATE INDEX bikes_owner ON bikes (owner_id) WHERE status = 'active';
-- The ingest reads the armed bikes on every flush: keep that an index scan however many bikes there are.
CREATE INDEX bikes_armed ON bikes (bike_id) WHERE armed;

-- Chips: a retired chip (replaced, or its bike deregistered) is bound to nothing and never again.
ALTER TABLE chips
    ADD COLUMN retired_at     timestamptz,
    ADD COLUMN retired_reason text,
    ADD CONSTRAINT chips_retired_unbound CHECK (retired_at IS NULL OR bike_id IS NULL);

ALTER TABLE theft_reports
    ADD COLUMN reported_by  text,
    ADD COLUMN recovered_by text;

CREATE TABLE bike_photos (
    photo_id      bigserial PRIMARY KEY,
    bike_id       bigint NOT NULL REFERENCES bikes,
    content_type  text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp')),
    data          bytea NOT NULL,
    uploaded_at   timestamptz NOT NULL DEFAULT now(),
    uploaded_by   text NOT NULL
);
CREATE INDEX bike_photos_bike ON bike_photos (bike_id);

-- History: one row per binding of an owner, a plate or a chip to a bike, from valid_from to valid_to.
CREATE TABLE bike_bindings (
    binding_id   bigserial PRIMARY KEY,
    bike_id      bigint NOT NULL REFERENCES bikes,
    kind         text NOT NULL CHECK (kind IN ('owner', 'plate', 'chip')),
    owner_id     bigint REFERENCES owners,
    plate        text,
    tag_id       bigint,
    valid_from   timestamptz NOT NULL DEFAULT now(),
    valid_to     timestamptz,
    bound_by     text NOT NULL,
    reason       text,
    unbound_by   text,
    end_reason   text,
    CHECK ((kind = 'owner') = (owner_id IS NOT NULL)),
    CHECK ((kind = 'plate') = (plate IS NOT NULL)),
    CHECK ((kind = 'chip') = (tag_id IS NOT NULL)),
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
-- One current binding of each kind per bike; a plate or chip currently bound to one bike only.
CREATE UNIQUE INDEX bike_bindings_one_current ON bike_bindings (bike_id, kind) WHERE valid_to IS NULL;
CREATE UNIQUE INDEX bike_bindings_plate_current ON bike_bindings (plate) WHERE kind = 'plate' AND valid_to IS NULL;
CREATE UNIQUE INDEX bike_bindings_chip_current ON bike_bindings (tag_id) WHERE kind = 'chip' AND valid_to IS NULL;
CREATE INDEX bike_bindings_bike ON bike_bindings (bike_id, valid_from);

CREATE FUNCTION bikeguard_actor() RETURNS text LANGUAGE sql STABLE
    RETURN coalesce(nullif(current_setting('bikeguard.actor', true), ''), 'db:' || current_user);

CREATE FUNCTION bikeguard_reason() RETURNS text LANGUAGE sql STABLE
    RETURN nullif(current_setting('bikeguard.reason', true), '');

CREATE FUNCTION bikeguard_rebind(b bigint, k text, new_owner bigint, new_plate text, new_tag bigint)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bike_bindings SET valid_to = now(), unbound_by = bikeguard_actor(), end_reason = bikeguard_reason()
        WHERE bike_id = b AND kind = k AND valid_to IS NULL;
    IF coalesce(new_owner::text, new_plate, new_tag::text) IS NOT NULL THEN
        INSERT INTO bike_bindings (bike_id, kind, owner_id, plate, tag_id, bound_by, reason)
        VALUES (b, k, new_owner, new_plate, new_tag, bikeguard_actor(), bikeguard_reason());
    END IF;
END
$$;

CREATE FUNCTION bikeguard_bikes_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.owner_id IS DISTINCT FROM OLD.owner_id THEN
        PERFORM bikeguard_rebind(NEW.bike_id, 'owner', NEW.owner_id, NULL, NULL);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.plate IS DISTINCT FROM OLD.plate THEN
        PERFORM bikeguard_rebind(NEW.bike_id, 'plate', NULL, NEW.plate, NULL);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER bikes_history AFTER INSERT OR UPDATE OF owner_id, plate ON bikes
    FOR EACH ROW EXECUTE FUNCTION bikeguard_bikes_history();

CREATE FUNCTION bikeguard_chips_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.bike_id IS NOT NULL AND NEW.bike_id IS DISTINCT FROM OLD.bike_id THEN
        UPDATE bike_bindings SET valid_to = now(), unbound_by = bikeguard_actor(), end_reason = bikeguard_reason()
            WHERE kind = 'chip' AND tag_id = OLD.tag_id AND valid_to IS NULL;
    END IF;
    IF NEW.bike_id IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.bike_id IS DISTINCT FROM OLD.bike_id) THEN
        PERFORM bikeguard_rebind(NEW.bike_id, 'chip', NULL, NULL, NEW.tag_id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER chips_history AFTER INSERT OR UPDATE OF bike_id ON chips
    FOR EACH ROW EXECUTE FUNCTION bikeguard_chips_history();

-- History is never rewritten: a binding may only be closed, once; nothing is deleted.
CREATE FUNCTION bikeguard_bindings_close_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.valid_to IS NOT NULL
       OR (NEW.binding_id, NEW.bike_id, NEW.kind, NEW.owner_id, NEW.plate, NEW.tag_id, NEW.valid_from,
           NEW.bound_by, NEW.reason)
          IS DISTINCT FROM
          (OLD.binding_id, OLD.bike_id, OLD.kind, OLD.owner_id, OLD.plate, OLD.tag_id, OLD.valid_from,
           OLD.bound_by, OLD.reason) THEN
        RAISE EXCEPTION 'bike_bindings is history: a binding can only be closed, once'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bike_bindings_close_only BEFORE UPDATE OR DELETE ON bike_bindings
    FOR EACH ROW EXECUTE FUNCTION bikeguard_bindings_close_only();

-- What the registry held before this migration becomes its first history.
INSERT INTO bike_bindings (bike_id, kind, owner_id, valid_from, bound_by, reason)
    SELECT bike_id, 'owner', owner_id, created_at, 'migration 0004', 'registration' FROM bikes;
INSERT INTO bike_bindings (bike_id, kind, plate, valid_from, bound_by, reason)
    SELECT bike_id, 'plate', plate, created_at, 'migration 0004', 'registration' FROM bikes WHERE plate IS NOT NULL;
INSERT INTO bike_bindings (bike_id, kind, tag_id, valid_from, bound_by, reason)
    SELECT bike_id, 'chip', tag_id, fitted_at, 'migration 0004', 'registration' FROM chips WHERE bike_id IS NOT NULL;

-- Certificates: one current certificate per bike; a change in the registry supersedes it.
CREATE TABLE certificates (
    certificate_id  bigserial PRIMARY KEY,
    bike_id         bigint NOT NULL REFERENCES bikes,
    owner_id        bigint NOT NULL REFERENCES owners,
    plate           text NOT NULL,
    tag_id          bigint,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    issued_by       text NOT NULL,
    superseded_at   timestamptz
);
CREATE UNIQUE INDEX certificates_one_current ON certificates (bike_id) WHERE superseded_at IS NULL;

-- An owner's consent to hand a bike over, given in the portal and used once at the counter.
CREATE TABLE transfer_consents (
    code_hash    bytea PRIMARY KEY,
    bike_id      bigint NOT NULL REFERENCES bikes,
    owner_id     bigint NOT NULL REFERENCES owners,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX transfer_consents_bike ON transfer_consents (bike_id);

-- Accounts: staff made by an admin, owners made at the counter (tied to their owner record).
CREATE TABLE accounts (
    account_id            bigserial PRIMARY KEY,
    username              text NOT NULL CHECK (username ~ '^[A-Za-z0-9._@-]{3,64}$'),
    password_hash         text NOT NULL,
    role                  text NOT NULL CHECK (role IN ('clerk', 'owner', 'police', 'installer', 'admin')),
    owner_id              bigint UNIQUE REFERENCES owners,
    display_name          text NOT NULL,
    must_change_password  boolean NOT NULL DEFAULT true,
    created_at            timestamptz NOT NULL DEFAULT now(),
    created_by            text NOT NULL,
    password_changed_at   timestamptz,
    disabled_at           timestamptz,
    CHECK ((role = 'owner') = (owner_id IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_username ON accounts (lower(username));

-- Sessions: only a hash of the token is kept; a session ends at expires_at or when revoked.
CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE login_attempts (
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    username      text NOT NULL,
    address       text,
    succeeded     boolean NOT NULL
);
CREATE INDEX login_attempts_username ON login_attempts (username, attempted_at DESC);
CREATE INDEX login_attempts_address ON login_attempts (address, attempted_at DESC);

-- The audit log: who looked at or changed what, and under which case number. Append-only.
CREATE TABLE audit_log (
    audit_id     bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    account_id   bigint,
    actor        text NOT NULL,
    role         text NOT NULL,
    action       text NOT NULL,
    subject      text,
    case_number  text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

CREATE FUNCTION bikeguard_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION bikeguard_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION bikeguard_audit_append_only();
