-- Read models (projections) of the log, and how far each has applied it.
--
-- A projection applies a batch of events and advances its row here in one transaction, so each
-- event is applied exactly once across crashes. A rebuild builds `<table>__rebuild` (created
-- LIKE the live table, so this file is the one definition of its shape) under the tracking
-- name `<name>__rebuild`, then swaps it in. See projections/runner.py.
CREATE TABLE projection_positions (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A member's balance as of the record time of its last event (balance_at); it stays exact
-- until next_change_at (a lot unlocks or expires, an earn leaves the tier window; NULL: never).
-- version/position: the member's last applied event; updated_at: when that event was recorded.
CREATE TABLE balances (
    member_id           uuid        PRIMARY KEY,
    available           bigint      NOT NULL,
    pending             bigint      NOT NULL,
    held                bigint      NOT NULL,
    lifetime_earned     bigint      NOT NULL,
    lifetime_redeemed   bigint      NOT NULL,
    expired             bigint      NOT NULL,
    qualifying          bigint      NOT NULL,
    tier                text        NOT NULL,
    balance_at          timestamptz NOT NULL,
    next_change_at      timestamptz,
    version             integer     NOT NULL,
    position            bigint      NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- The member view. identities holds [{kind, value}] with every value masked: no clear
-- personal value is ever stored in a projection. channels: the channels used, first use first.
CREATE TABLE members (
    member_id           uuid        PRIMARY KEY,
    status              text        NOT NULL,
    merged_into         uuid,
    identities          jsonb       NOT NULL,
    channels            jsonb       NOT NULL,
    first_activity_at   timestamptz,
    last_activity_at    timestamptz,
    available           bigint      NOT NULL,
    pending             bigint      NOT NULL,
    held                bigint      NOT NULL,
    lifetime_earned     bigint      NOT NULL,
    lifetime_redeemed   bigint      NOT NULL,
    expired             bigint      NOT NULL,
    qualifying          bigint      NOT NULL,
    tier                text        NOT NULL,
    balance_at          timestamptz NOT NULL,
    next_change_at      timestamptz,
    version             integer     NOT NULL,
    position            bigint      NOT NULL,
    updated_at          timestamptz NOT NULL
);
