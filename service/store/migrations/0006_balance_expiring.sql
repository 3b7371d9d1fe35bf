-- The balance shows the next points to expire (SPEC §4 `expiring: {points, at}`). Rows written
-- before this migration have NULL here until their member's next event or a rebuild
-- (`loyalty projections rebuild balances|members`).
ALTER TABLE balances ADD COLUMN expiring_points bigint, ADD COLUMN expiring_at timestamptz;
ALTER TABLE members ADD COLUMN expiring_points bigint, ADD COLUMN expiring_at timestamptz;
