-- Notifications outside the page (issue 15): each owner's choices, their Web Push subscriptions, and an outbox
-- written in the same statement as the alarm (or registry event) that causes it, sent by backend.notifications.

-- What an owner wants to be told, and how. Channels the owner has not chosen get no rows in the outbox; an owner
-- without a row here is told nothing outside the page (opt-in: an SMS costs the county, an e-mail needs an address).
-- The e-mail address and SMS number are personal data like owners.mobile: only the owner reads or changes them.
CREATE TABLE notification_preferences (
    owner_id     bigint PRIMARY KEY REFERENCES owners ON DELETE CASCADE,
    channels     text[] NOT NULL DEFAULT '{}' CHECK (channels <@ ARRAY['email', 'sms', 'webpush']),
    email        text CHECK (email ~ '^[^@\s]{1,64}@[^@\s]{1,255}$'),
    sms_number   text CHECK (sms_number ~ '^\+?[0-9]{5,20}$'),
    language     text NOT NULL DEFAULT 'zh' CHECK (language IN ('zh', 'en')),
    -- Quiet hours in the owner's time zone, [start, end) (may wrap midnight); a stolen-bike alert ignores them.
    quiet_start  time,
    quiet_end    time,
    time_zone    text NOT NULL DEFAULT 'Asia/Shanghai' CHECK (time_zone ~ '^[!-~]{1,64}$'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- The portal installed as a web app on one of the owner's devices.
CREATE TABLE push_subscriptions (
    subscription_id bigserial PRIMARY KEY,
    owner_id        bigint NOT NULL REFERENCES owners ON DELETE CASCADE,
    endpoint        text NOT NULL UNIQUE CHECK (endpoint ~ '^https?://' AND length(endpoint) <= 2048),
    p256dh          text NOT NULL CHECK (length(p256dh) BETWEEN 80 AND 100),
    auth            text NOT NULL CHECK (length(auth) BETWEEN 16 AND 32),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_subscriptions_owner ON push_subscriptions (owner_id);

-- The outbox: one row per (event, owner, channel). event_key names the event ('alarm:17', 'alarm:17:station:st-3',
-- 'recovered:4', 'transfer:9'), so a redelivered batch or a repeated update of the same alarm inserts nothing.
-- `facts` holds what the text says (plate, station name, time); never the owner's name or ID number.
CREATE TABLE notifications (
    notification_id bigserial PRIMARY KEY,
    owner_id        bigint NOT NULL REFERENCES owners ON DELETE CASCADE,
    event_key       text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('armed_bike_moving', 'stolen_chip_seen', 'alarm_cleared',
                                                  'bike_recovered', 'transfer_requested')),
    channel         text NOT NULL CHECK (channel IN ('email', 'sms', 'webpush')),
    urgent          boolean NOT NULL DEFAULT false,   -- sent in quiet hours too
    alarm_id        bigint REFERENCES alarms,
    bike_id         bigint REFERENCES bikes,
    facts           jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- When a worker took it (state 'sending'): a worker that died mid-send leaves it 'sending'; after the lease
    -- it is tried again with the same idempotency key.
    claimed_at      timestamptz,
    sent_at         timestamptz,
    reference       text,                         -- what the provider answered (its message id)
    last_error      text,
    UNIQUE (event_key, owner_id, channel)
);
CREATE INDEX notifications_due ON notifications (due_at) WHERE state IN ('pending', 'sending');
CREATE INDEX notifications_owner_recent ON notifications (owner_id, created_at DESC);
