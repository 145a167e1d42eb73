-- krouter store, schema 1. Written only by krouter-admin; read by the proxy.
-- Secrets never appear here in plaintext: API keys are HMAC digests, provider credentials
-- are AES-256-GCM envelopes bound to their row.

-- Install-wide values: the HKDF salt and the storage key's check value.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,   -- public key id, kid_...
    digest      TEXT NOT NULL UNIQUE,        -- hex HMAC-SHA256(API_KEY_SECRET, key)
    label       TEXT NOT NULL,
    key_group   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,            -- unix seconds
    expires_at  INTEGER,
    revoked_at  INTEGER,
    mac         TEXT NOT NULL                -- HMAC of the row under the audit key: edits are detected
) STRICT;

CREATE TABLE credentials (
    name        TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,               -- the provider kind it is for, or 'generic'
    value       TEXT NOT NULL,               -- enc:v1:... bound to (credentials, value, name)
    fingerprint TEXT NOT NULL,               -- short keyed hash, for humans comparing values
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- Append-only, hash-chained log of every admin action. `mac` chains each row to the one
-- before under a key derived from the storage key, so rows cannot be forged without it.
CREATE TABLE audit (
    seq      INTEGER PRIMARY KEY NOT NULL,   -- 1, 2, 3, ... with no gaps
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    prev_mac TEXT NOT NULL,
    mac      TEXT NOT NULL
) STRICT;

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
