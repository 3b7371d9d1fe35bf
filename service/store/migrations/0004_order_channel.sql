-- The channel that reported each order: a second earn for the order from another channel is
-- refused without naming the member who owns it (SPEC §4: only the channel that made the order
-- learns whose it is). NULL for orders claimed before this migration: named to no one.
ALTER TABLE order_refs ADD COLUMN channel text;
