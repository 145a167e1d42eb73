-- krouter state, schema 1. Written only by the proxy; read by krouter-admin for reports.
-- Never holds prompt or completion content, nor any secret.

-- The last policy the proxy accepted, to refuse rollbacks across restarts.
CREATE TABLE accepted_policy (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    serial      INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    accepted_at INTEGER NOT NULL
) STRICT;

-- One metadata row per request.
CREATE TABLE requests (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,      -- unix milliseconds
    request_id    TEXT NOT NULL,
    key_id        TEXT,
    key_group     TEXT,
    model         TEXT,
    provider      TEXT,
    upstream_model TEXT,
    status        INTEGER NOT NULL,
    latency_ms    INTEGER NOT NULL,
    ttfb_ms       INTEGER,
    tokens_in     INTEGER,
    tokens_out    INTEGER
) STRICT;
CREATE INDEX requests_at ON requests (at);
