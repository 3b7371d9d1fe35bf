-- The hash chains of the log (service/store/chain.py, ADR 14): each event's stream hash and the
-- global hash at its position, computed here for the events stored before this migration, in
-- position order, exactly as the appender computes them for new ones (a test proves it).
ALTER TABLE events ADD COLUMN hash bytea, ADD COLUMN global_hash bytea;

CREATE TEMP TABLE audit_stream_heads (stream_id uuid PRIMARY KEY, hash bytea NOT NULL);

DO $$
DECLARE
    r record;
    previous bytea;
    event_hash bytea;
    chain bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR r IN SELECT * FROM events ORDER BY position LOOP
        SELECT hash INTO previous FROM audit_stream_heads WHERE stream_id = r.stream_id;
        event_hash := sha256(
            coalesce(previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
            || uuid_send(r.event_id) || uuid_send(r.stream_id) || int4send(r.stream_version)
            || int4send(octet_length(convert_to(r.event_type, 'UTF8'))) || convert_to(r.event_type, 'UTF8')
            || int4send(octet_length(convert_to(r.topic, 'UTF8'))) || convert_to(r.topic, 'UTF8')
            || int4send(octet_length(r.data)) || r.data
            || coalesce(int4send(octet_length(convert_to(r.channel, 'UTF8'))) || convert_to(r.channel, 'UTF8'), int4send(-1))
            || coalesce(int4send(octet_length(convert_to(r.api_key_id, 'UTF8'))) || convert_to(r.api_key_id, 'UTF8'), int4send(-1))
            || coalesce(int4send(octet_length(convert_to(r.correlation_id, 'UTF8'))) || convert_to(r.correlation_id, 'UTF8'), int4send(-1))
            || coalesce(int4send(octet_length(convert_to(r.causation_id, 'UTF8'))) || convert_to(r.causation_id, 'UTF8'), int4send(-1))
            || timestamptz_send(r.occurred_at) || timestamptz_send(r.recorded_at));
        chain := sha256(chain || int8send(r.position) || event_hash);
        UPDATE events SET hash = event_hash, global_hash = chain WHERE position = r.position;
        INSERT INTO audit_stream_heads (stream_id, hash) VALUES (r.stream_id, event_hash)
        ON CONFLICT (stream_id) DO UPDATE SET hash = EXCLUDED.hash;
    END LOOP;
END $$;

DROP TABLE audit_stream_heads;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL, ALTER COLUMN global_hash SET NOT NULL;

-- Signed checkpoints (service/checkpoints.py): the global hash at a position, signed with the
-- service's Ed25519 key (derived from the master key); `published` once NATS has it.
CREATE TABLE audit_checkpoints (
    position        bigint      PRIMARY KEY,
    global_hash     bytea       NOT NULL,
    signed_at       timestamptz NOT NULL,
    public_key      bytea       NOT NULL,
    signature       bytea       NOT NULL,
    published       boolean     NOT NULL DEFAULT false
);
