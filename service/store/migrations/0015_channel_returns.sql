-- Members active through a channel over any range of days, exactly, without a row per member
-- (ADR 26, projections/channel_reach.py): member-days less returns within the range.

-- Members active (a purchase or a redemption) that day through the channel: one per active
-- `channel_days` row. Added up over a range these are member-days, not members.
ALTER TABLE channel_totals ADD COLUMN active_members bigint NOT NULL DEFAULT 0;
UPDATE channel_totals t SET active_members = a.members
FROM (
    SELECT day, channel, count(*) AS members FROM channel_days
    WHERE purchases > 0 OR redemptions > 0 GROUP BY 1, 2
) AS a
WHERE t.day = a.day AND t.channel = a.channel;

-- Returns: pairs of successive active days `prev` < `day` of a member through a channel, counted
-- at four grains ('dd' day x day, 'dm' day x month, 'md' month x day, 'mm' month x month; a month
-- is its first day). Kept in the statement that adds to `channel_days`, computed afresh when a
-- rebuilt table is swapped in. Not a projection table of its own: no personal data, no member.
CREATE TABLE channel_returns (
    grain               text        NOT NULL CHECK (grain IN ('dd', 'dm', 'md', 'mm')),
    prev                date        NOT NULL,
    day                 date        NOT NULL,
    channel             text        NOT NULL,
    returns             bigint      NOT NULL,
    PRIMARY KEY (grain, prev, day, channel)
);
-- The same count as channel_reach.recompute() (kept here as it was when this ran).
INSERT INTO channel_returns (grain, prev, day, channel, returns)
WITH steps AS (
    SELECT channel, lag(day) OVER (PARTITION BY member_id, channel ORDER BY day) AS prev, day
    FROM channel_days WHERE purchases > 0 OR redemptions > 0
), c AS (
    SELECT channel, prev, day, count(*) AS n FROM steps WHERE prev IS NOT NULL GROUP BY 1, 2, 3
)
SELECT g.grain, g.prev, g.day, c.channel, sum(c.n)
FROM c CROSS JOIN LATERAL (VALUES
    ('dd', c.prev, c.day),
    ('dm', c.prev, c.day - extract(day FROM c.day)::int + 1),
    ('md', c.prev - extract(day FROM c.prev)::int + 1, c.day),
    ('mm', c.prev - extract(day FROM c.prev)::int + 1, c.day - extract(day FROM c.day)::int + 1)
) AS g (grain, prev, day)
GROUP BY 1, 2, 3, 4;

-- A member's active days through a channel, for the neighbours of a day active for the first
-- time. It replaces the index the distinct count read (named as a rebuild's swap names it; a
-- table swapped in by a rebuild had the old one under its generated name). Reads of a version
-- still running during an upgrade get slower, not wrong.
DROP INDEX IF EXISTS channel_days_active;
DROP INDEX IF EXISTS channel_days_day_channel_member_id_idx;
CREATE INDEX channel_days_member_id_channel_day_idx ON channel_days (member_id, channel, day)
    WHERE purchases > 0 OR redemptions > 0;
