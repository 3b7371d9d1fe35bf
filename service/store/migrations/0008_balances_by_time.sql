-- The clock (service/clock.py) looks for members whose balance changes with time
-- (next_change_at has passed) and for rows projected since its last pass (position): without
-- these it reads the whole table each time. A rebuild's table is created LIKE this one
-- INCLUDING ALL, so it has them too.
CREATE INDEX balances_next_change_at ON balances (next_change_at, member_id) WHERE next_change_at IS NOT NULL;
CREATE INDEX balances_position ON balances (position);
