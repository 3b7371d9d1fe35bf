-- Checkpoints: how far each follower of the log has applied it, one row per follower (the relay,
-- each projection and its `<name>__rebuild`, a process recorded through the library's tracking
-- contract). One table with one name replaces `tracking` (a row per position) and
-- `projection_positions`.
--
-- A projection locks its row (FOR UPDATE) and advances it in the transaction that writes its
-- rows; the relay writes its row only on its lock connection (and may move it back when the
-- stream lost its tail); the library's tracking only ever moves a row forward. See
-- projections/tracking.py, service/bus/relay.py and service/store/recorder.py.
CREATE TABLE checkpoints (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

INSERT INTO checkpoints (name, position, updated_at)
SELECT name, position, updated_at FROM projection_positions;

-- Only a name's furthest position matters. A name also in projection_positions would be two
-- followers under one name: the primary key refuses it (the migration fails) rather than guess.
INSERT INTO checkpoints (name, position)
SELECT name, max(position) FROM tracking GROUP BY name;

DROP TABLE tracking;
DROP TABLE projection_positions;
