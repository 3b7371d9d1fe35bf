-- The service's own secrets (identity-index, idempotency-record and checkpoint-signing keys),
-- wrapped by the master key: one row. They were derived from the original master key; stored,
-- they survive a rotation of the master key, which re-wraps this row with the member keys (ADR 20).
CREATE TABLE service_secrets (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    sealed bytea NOT NULL
);
