-- Which member placed each hold: `/v1/holds/{hold_id}/…` names no member, so a capture or a
-- release finds the hold's stream here. Written by the appender in the transaction of the
-- points_held event (strongly consistent: a capture right after the hold finds it). Rows stay
-- after the hold closes, so that a second capture is told the hold is no longer active.
CREATE TABLE holds (
    hold_id         uuid        PRIMARY KEY,
    member_id       uuid        NOT NULL,
    expires_at      timestamptz NOT NULL,
    position        bigint      NOT NULL
);
