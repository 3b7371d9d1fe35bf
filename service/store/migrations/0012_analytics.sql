-- Analytics read models (issue 13). Like every projection they are folded from the log with
-- their checkpoint (projections/); a rebuild creates `<table>__rebuild` LIKE these INCLUDING ALL.
-- None holds personal data: ids, channels, instants and amounts only.

-- `segments`: one row per member, what its segments are decided from and what they are.
-- The facts come from the member's last event; `in_<segment>` are the segments as of
-- `evaluated_at` (the later of that event's time and the last re-evaluation by the clock), and
-- `next_change_at` the first later instant at which a time-based segment (new, active, at_risk,
-- dormant) changes with no event. `thresholds` names the rules' segment thresholds they were
-- decided with (a rules change re-decides every row). `channels`: first use first (journeys).
CREATE TABLE segments (
    member_id           uuid        PRIMARY KEY,
    status              text        NOT NULL,
    enrolled_at         timestamptz NOT NULL,
    last_activity_at    timestamptz NOT NULL,
    lifetime_earned     bigint      NOT NULL,
    channels            jsonb       NOT NULL,
    in_new              boolean     NOT NULL,
    in_active           boolean     NOT NULL,
    in_high_value       boolean     NOT NULL,
    in_at_risk          boolean     NOT NULL,
    in_dormant          boolean     NOT NULL,
    in_multi_channel    boolean     NOT NULL,
    thresholds          text        NOT NULL,
    evaluated_at        timestamptz NOT NULL,
    next_change_at      timestamptz,
    version             integer     NOT NULL,
    position            bigint      NOT NULL
);
CREATE INDEX segments_next_change_at ON segments (next_change_at) WHERE next_change_at IS NOT NULL;
-- GET /v1/segments/{name}/members pages by member id through these.
CREATE INDEX segments_new ON segments (member_id) WHERE in_new;
CREATE INDEX segments_active ON segments (member_id) WHERE in_active;
CREATE INDEX segments_high_value ON segments (member_id) WHERE in_high_value;
CREATE INDEX segments_at_risk ON segments (member_id) WHERE in_at_risk;
CREATE INDEX segments_dormant ON segments (member_id) WHERE in_dormant;
CREATE INDEX segments_multi_channel ON segments (member_id) WHERE in_multi_channel;

-- Members per segment, and active members per (first channel, next channel or '' for none,
-- number of channels): kept in the transactions that change `segments` rows (from their
-- transitions and facts), and computed afresh when a rebuilt table is swapped in, so the
-- analytics read a few rows instead of scanning one row per member.
CREATE TABLE segment_counts (
    segment             text        PRIMARY KEY,
    members             bigint      NOT NULL
);
CREATE TABLE journey_counts (
    first_channel       text        NOT NULL,
    next_channel        text        NOT NULL,
    channels            integer     NOT NULL,
    members             bigint      NOT NULL,
    PRIMARY KEY (first_channel, next_channel, channels)
);

-- The outbox of segment changes: written in the transaction that changes a `segments` row
-- (the projection's batch, the clock's re-evaluation, a rebuild's swap), all of which lock the
-- projection's checkpoint first, so `sequence` is assigned and committed in order. The segments
-- relay publishes them in `sequence` order to LOYALTY_SEGMENTS (its checkpoint:
-- `segments_relay`). Not a projection table: a rebuild never rewrites what was announced.
CREATE TABLE segment_transitions (
    sequence            bigserial   PRIMARY KEY,
    transition_id       uuid        NOT NULL UNIQUE,
    member_id           uuid        NOT NULL,
    segment             text        NOT NULL,
    entered             boolean     NOT NULL,
    at                  timestamptz NOT NULL,  -- when the change took effect
    position            bigint      NOT NULL,  -- the log position it was decided at
    recorded_at         timestamptz NOT NULL DEFAULT now()
);

-- `liability`: per member, what outstanding points are made of, one row per item: `lot`
-- (points left in a lot, with its available_at and expires_at), `hold` (an open hold and its
-- expiry), `debt` (points owed after a reversal took back spent points), `expired` (recorded
-- expiries), `earned` (lifetime earned, net of refunds). Totals at any instant are sums
-- (projections/liability.py), so pending turning available needs no event.
CREATE TABLE liability (
    member_id           uuid        NOT NULL,
    kind                text        NOT NULL,
    item                integer     NOT NULL,
    points              bigint      NOT NULL,
    available_at        timestamptz,
    expires_at          timestamptz,
    PRIMARY KEY (member_id, kind, item)
);
CREATE INDEX liability_holds ON liability (member_id) WHERE kind = 'hold';
CREATE INDEX liability_lots_available ON liability (available_at) WHERE kind = 'lot';
CREATE INDEX liability_lots_expires ON liability (expires_at) WHERE kind = 'lot';

-- The items added up by kind and, for lots, by the UTC hours of their available_at and
-- expires_at ('infinity': never; '-infinity' for the other kinds). Kept in the transactions
-- that change `liability` rows, computed afresh when a rebuilt table is swapped in. The totals at
-- an instant are these sums, but for the lots in the hours around it, read one by one.
CREATE TABLE liability_sums (
    kind                text        NOT NULL,
    available_hour      timestamptz NOT NULL,
    expires_hour        timestamptz NOT NULL,
    points              bigint      NOT NULL,
    PRIMARY KEY (kind, available_hour, expires_hour)
);

-- `channel_days`: per UTC day, channel and member, what the member did through the channel.
-- Additive: each event adds to its row once (the projection skips what its checkpoint passed).
-- A purchase counts on its business day (occurred_at), everything else on its record day.
CREATE TABLE channel_days (
    day                 date        NOT NULL,
    channel             text        NOT NULL,
    member_id           uuid        NOT NULL,
    enrolments          integer     NOT NULL DEFAULT 0,
    purchases           integer     NOT NULL DEFAULT 0,
    revenue             numeric     NOT NULL DEFAULT 0,
    refunded            numeric     NOT NULL DEFAULT 0,
    redemptions         integer     NOT NULL DEFAULT 0,
    points_earned       bigint      NOT NULL DEFAULT 0,
    points_redeemed     bigint      NOT NULL DEFAULT 0,
    points_expired      bigint      NOT NULL DEFAULT 0,
    points_reversed     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel, member_id)
);
-- Active members in a range are counted from these (an index-only scan where it can).
CREATE INDEX channel_days_active ON channel_days (day, channel, member_id) WHERE purchases > 0 OR redemptions > 0;

-- The same added up per day and channel: kept in the transactions that add to `channel_days`,
-- computed afresh when a rebuilt table is swapped in; a range's sums read one row a day.
CREATE TABLE channel_totals (
    day                 date        NOT NULL,
    channel             text        NOT NULL,
    enrolments          bigint      NOT NULL DEFAULT 0,
    purchases           bigint      NOT NULL DEFAULT 0,
    revenue             numeric     NOT NULL DEFAULT 0,
    refunded            numeric     NOT NULL DEFAULT 0,
    redemptions         bigint      NOT NULL DEFAULT 0,
    points_earned       bigint      NOT NULL DEFAULT 0,
    points_redeemed     bigint      NOT NULL DEFAULT 0,
    points_expired      bigint      NOT NULL DEFAULT 0,
    points_reversed     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel)
);
