-- What each campaign (each variant of it) did for each member: the `campaign_members`
-- projection (projections/campaigns.py). campaigns holds [{campaign_id, variant, earns, points,
-- revenue}] for the member, net of refunds; the analytics of a campaign sum it per variant.
-- The GIN index finds the members of one campaign without reading every row (a rebuild's
-- table is created LIKE this one INCLUDING ALL, so it has it too).
CREATE TABLE campaign_members (
    member_id   uuid        PRIMARY KEY,
    campaigns   jsonb       NOT NULL,
    version     integer     NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX campaign_members_campaigns ON campaign_members USING gin (campaigns jsonb_path_ops);
