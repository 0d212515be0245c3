-- Login throttling (issue 11 #9): one row per account name and per client address, updated by one statement per
-- attempt (so parallel attempts are counted one at a time), holding when the next attempt may be made.
-- Failures grow a delay instead of locking anyone out for a fixed time; `login_attempts` stays the history.
CREATE TABLE login_throttle (
    throttle_key     text PRIMARY KEY,  -- 'account:<lower-case username>' or 'address:<client address>'
    failures         integer NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL
);
CREATE INDEX login_throttle_last_failed ON login_throttle (last_failed_at);

-- How long the attempt after the n-th failure in a row waits: nothing before `free` failures, then 2^(n - free) s,
-- at most max_delay_s.
CREATE FUNCTION bikeguard_login_delay(failures integer, free integer, max_delay_s integer) RETURNS interval
    LANGUAGE sql IMMUTABLE
    RETURN CASE WHEN failures < free THEN interval '0'
        ELSE make_interval(secs => least(max_delay_s, power(2, least(failures - free, 30)))) END;
