-- What each campaign (each variant of it) did for each member: the `campaign_members`
-- projection (projections/campaigns.py). campaigns holds [{campaign_id, variant, earns, points,
-- revenue}] for the member, net of refunds; the analytics of a campaign sum it per variant.
-- No index on campaigns: every earn a campaign applies to rewrites its member's row, and a GIN
-- index on it cost the earn path more than the rare analytics read saves (docs/benchmarks.md,
-- "Campaigns"); that read scans the rows of the members campaigns reached.
CREATE TABLE campaign_members (
    member_id   uuid        PRIMARY KEY,
    campaigns   jsonb       NOT NULL,
    version     integer     NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL
);
