-- krouter state, schema 2: brute-force lockout, kept here so a restart does not reset it.
-- A client is an IPv4 address or an IPv6 /64 ("2001:db8:1:2::/64"); never a key.

-- One row per failed authentication (missing, malformed, unknown, revoked or expired key).
CREATE TABLE auth_failures (
    id     INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    at     INTEGER NOT NULL          -- unix milliseconds
) STRICT;
CREATE INDEX auth_failures_at ON auth_failures (at);

-- Addresses locked out, until when.
CREATE TABLE lockouts (
    client TEXT PRIMARY KEY NOT NULL,
    until  INTEGER NOT NULL          -- unix milliseconds
) STRICT;
