-- The W3C trace context of what caused each event (service/tracing.py): the relay sends it as the
-- CloudEvents `traceparent` extension, so a subscriber continues the trace. Operational metadata,
-- not part of the ledger: the hash chains do not cover it. NULL for an untraced cause.
ALTER TABLE events ADD COLUMN traceparent text;
