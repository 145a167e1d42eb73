-- krouter state, schema 3: per-target health (so a restart keeps an open breaker open and a
-- rate-limited target resting) and usage aggregates for `no_log` groups (counts only: no
-- request rows, no key id).

-- One row per target (provider and upstream model) that is not healthy.
CREATE TABLE target_health (
    provider   TEXT NOT NULL,
    model      TEXT NOT NULL,
    open_until INTEGER,              -- unix ms: breaker open until then, half-open after; NULL: closed
    cool_until INTEGER,              -- unix ms: answered 429, rests until then; NULL: not resting
    PRIMARY KEY (provider, model)
) STRICT;

-- Daily counters for groups marked `no_log`, added to as requests end.
CREATE TABLE usage_aggregates (
    day        TEXT NOT NULL,        -- UTC date, YYYY-MM-DD
    key_group  TEXT NOT NULL,
    model      TEXT NOT NULL,        -- '' when the request named none
    provider   TEXT NOT NULL,        -- '' when no provider was tried
    requests   INTEGER NOT NULL,
    errors     INTEGER NOT NULL,     -- status 400 and above
    tokens_in  INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    PRIMARY KEY (day, key_group, model, provider)
) STRICT;
