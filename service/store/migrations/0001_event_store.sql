-- The event store: one append-only table of events, the global log ordered by position.
--
-- position is assigned by the appender while it holds the append lock (see
-- docs/decisions/0002-positions-by-serialised-group-commit.md): max(position) + 1 inside a
-- transaction serialised by pg_advisory_xact_lock, so positions are gapless and strictly
-- increasing in commit order; a reader that has seen N never later finds an event below N.
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    stream_id       uuid        NOT NULL,
    stream_version  integer     NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    data            bytea       NOT NULL,
    channel         text,
    api_key_id      text,
    correlation_id  text,
    causation_id    text,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);

-- Latest snapshot per stream; events after snapshot.stream_version are replayed on top.
CREATE TABLE snapshots (
    stream_id       uuid        PRIMARY KEY,
    stream_version  integer     NOT NULL,
    topic           text        NOT NULL,
    data            bytea       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

-- How far each follower of the log (projection, relay, library process) has applied it.
CREATE TABLE tracking (
    name            text        NOT NULL,
    position        bigint      NOT NULL,
    PRIMARY KEY (name, position)
);

-- The first successful response to each (channel, Idempotency-Key), written in the same
-- transaction as the command's events; replayed for 24 h.
CREATE TABLE idempotency_keys (
    channel         text        NOT NULL,
    key             text        NOT NULL,
    request_hash    bytea       NOT NULL,
    status          smallint    NOT NULL,
    response        bytea       NOT NULL,
    position        bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Unique claims checked and written under the append lock with the events that make them:
-- an order earns once across the whole program; an identity belongs to one active member.
-- Identity values are held as a keyed hash (HMAC), never in the clear.
CREATE TABLE order_refs (
    order_ref       text        PRIMARY KEY,
    member_id       uuid        NOT NULL,
    position        bigint      NOT NULL
);

CREATE TABLE identities (
    kind            text        NOT NULL,
    value_hash      bytea       NOT NULL,
    member_id       uuid        NOT NULL,
    position        bigint      NOT NULL,
    PRIMARY KEY (kind, value_hash)
);
CREATE INDEX identities_member_id ON identities (member_id);

-- Per-member data keys (wrapped by the master key): deleting one crypto-shreds the member's
-- personal data in every event, projection and backup that holds it.
CREATE TABLE member_keys (
    member_id       uuid        PRIMARY KEY,
    wrapped_key     bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    shredded_at     timestamptz
);

CREATE TABLE channels (
    id              text        PRIMARY KEY,
    name            text        NOT NULL,
    kind            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- API keys: the key is stored only as its SHA-256 (generated keys are 256-bit random, so a
-- fast hash is enough; there is nothing to brute-force) and found by it.
CREATE TABLE api_keys (
    key_id          uuid        PRIMARY KEY,
    channel         text        NOT NULL REFERENCES channels (id),
    scopes          text[]      NOT NULL,
    name            text,
    secret_hash     bytea       NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
