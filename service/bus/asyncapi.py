"""The AsyncAPI 3.0 document of the events the relay publishes.

Its schemas are generated (`msgspec.json.schema_components`) from the very Structs the relay
encodes with (service.bus.cloudevents), which are themselves generated from the domain event
classes: the document cannot describe a message the relay does not send. JetStream specifics,
which AsyncAPI has no words for, go in `x-` extensions.

    python -m service.bus.asyncapi > docs/asyncapi.json
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import msgspec

from service.config import Settings
from service.store.audit import SignedCheckpoint

from . import cloudevents, segments
from .relay import DUPLICATE_WINDOW_S

VERSION = "1.0.0"
_REF = "#/components/schemas/{name}"


def asyncapi_document(
    settings: Settings | None = None,
    *,
    subject_prefix: str = cloudevents.DEFAULT_SUBJECT_PREFIX,
    source: str = cloudevents.DEFAULT_SOURCE,
) -> dict[str, Any]:
    """The document, for the stream named in `settings` (default: the default settings)."""
    settings = settings or Settings()
    catalogue = cloudevents.event_classes()
    structs = {name: cloudevents.data_type(cls).struct for name, (cls, _) in catalogue.items()}
    refs, schemas = msgspec.json.schema_components(
        [*(cloudevents.CloudEvent[s] for s in structs.values()), segments.SegmentEvent, SignedCheckpoint],  # type: ignore[valid-type]
        ref_template=_REF,
    )
    schemas = _clean_descriptions(schemas)
    segment_envelope, checkpoint_ref = refs[-2:]
    envelopes = dict(zip(structs, refs[:-2], strict=True))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, (cls, kind) in catalogue.items():
        summary = " ".join(cloudevents.event_doc(cls).split("\n\n")[0].split())
        ce_type = cloudevents.ce_type(name)
        is_program = kind == "program"
        token = cloudevents.PROGRAM_SUBJECT if is_program else "{member_id}"
        channel: dict[str, Any] = {
            "address": f"{subject_prefix}.{name}.{token}",
            "title": name,
            "summary": summary,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        if not is_program:
            channel["parameters"] = {"member_id": {"$ref": "#/components/parameters/member_id"}}
        channels[name] = channel
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"The ledger publishes each committed `{name}` event, once, in log order.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        }
        subject_schema: dict[str, Any] = (
            {"const": cloudevents.PROGRAM_SUBJECT}
            if is_program
            else {"type": "string", "format": "uuid", "description": "The member's id."}
        )
        messages[name] = {
            "name": name,
            "title": cls.__name__,
            "summary": summary,
            "contentType": cloudevents.DATACONTENTTYPE,
            "headers": {"$ref": "#/components/schemas/NatsHeaders"},
            "payload": {
                "allOf": [
                    envelopes[name],
                    {"type": "object", "properties": {"type": {"const": ce_type}, "subject": subject_schema}},
                ]
            },
            "x-cloudevents-type": ce_type,
        }

    _segment_channels(
        channels, operations, messages, segment_envelope, segments.subject_prefix(subject_prefix), settings
    )
    channels["audit_checkpoint"] = {
        "address": settings.audit_subject,
        "title": "audit_checkpoint",
        "summary": "A signed checkpoint of the ledger's log (ADR 14).",
        "messages": {"audit_checkpoint": {"$ref": "#/components/messages/audit_checkpoint"}},
    }
    operations["publish_audit_checkpoint"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/audit_checkpoint"},
        "summary": "The ledger publishes each signed checkpoint once it is stored (core NATS, not the"
        " stream: keep your own copies).",
        "messages": [{"$ref": "#/channels/audit_checkpoint/messages/audit_checkpoint"}],
    }
    messages["audit_checkpoint"] = {
        "name": "audit_checkpoint",
        "title": "SignedCheckpoint",
        "summary": "The global hash of the log at a position, signed with the ledger's Ed25519 key"
        " (GET /v1/audit/public-key): verify `signature` over `message`, then that the log's global"
        " hash at `position` is still `global_hash`.",
        "contentType": "application/json",
        "payload": checkpoint_ref,
    }

    schemas["NatsHeaders"] = {
        "type": "object",
        "description": "NATS message headers.",
        "properties": {
            "Nats-Msg-Id": {
                "type": "string",
                "format": "uuid",
                "description": "The event id (= CloudEvents `id`): the stream de-duplicates on it.",
            },
        },
        "required": ["Nats-Msg-Id"],
    }
    max_age = settings.stream_max_age_days * 86400
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Loyalty ledger events",
            "version": VERSION,
            "description": _DESCRIPTION.format(prefix=subject_prefix, stream=settings.stream_name),
        },
        "defaultContentType": cloudevents.DATACONTENTTYPE,
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The deployment's NATS server (JetStream enabled).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
            "parameters": {
                "member_id": {"description": "The member's id (a UUID): one subject per member."},
                "segment": {
                    "description": "The segment (SPEC §3; thresholds in the rules' `segments`).",
                    "enum": list(segments.SEGMENTS),
                },
            },
        },
        "x-cloudevents": {"specversion": cloudevents.SPECVERSION, "mode": "structured", "source": source},
        "x-jetstream": {
            "stream": settings.stream_name,
            "subjects": [f"{subject_prefix}.>"],
            "storage": "file",
            "replicas": settings.stream_replicas,
            "maxAgeSeconds": max_age or None,
            "duplicateWindowSeconds": min(DUPLICATE_WINDOW_S, max_age) if max_age else DUPLICATE_WINDOW_S,
            "deduplication": "Nats-Msg-Id header = event id",
            "ordering": "stream sequence follows the ledger's log position",
        },
    }


def _segment_channels(
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
    envelope: dict[str, Any],
    prefix: str,
    settings: Settings,
) -> None:
    """The segment changes, published by the segments relay to a stream of their own."""
    for name, ce_type, verb in (
        ("segment_entered", segments.ENTERED, "entered"),
        ("segment_left", segments.LEFT, "left"),
    ):
        summary = f"A member {verb} a segment (its row in the `segments` read model changed)."
        channels[name] = {
            "address": f"{prefix}.{{segment}}.{{member_id}}",
            "title": name,
            "summary": summary,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "parameters": {
                "segment": {"$ref": "#/components/parameters/segment"},
                "member_id": {"$ref": "#/components/parameters/member_id"},
            },
            "x-jetstream": {"stream": segments.stream_name(settings), "subjects": [f"{prefix}.>"]},
        }
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"The ledger publishes each committed `{name}` change, once, in order.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        }
        messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": cloudevents.DATACONTENTTYPE,
            "headers": {"$ref": "#/components/schemas/NatsHeaders"},
            "payload": {"allOf": [envelope, {"type": "object", "properties": {"type": {"const": ce_type}}}]},
            "x-cloudevents-type": ce_type,
        }


_DESCRIPTION = """\
Every event committed to the loyalty ledger, published once to the JetStream stream `{stream}`
(subjects `{prefix}.>`) in the order of the ledger's log, as a CloudEvents 1.0 structured JSON
message. The subject is `{prefix}.<event_type>.<member_id>` (`.program` for the program's rules
and campaigns), so a consumer can filter by event type, by member, or both.

- `position` (extension) is the event's place in the ledger's global log: strictly increasing,
  without gaps, in stream order. Use it as a checkpoint.
- `streamversion` (extension) is the event's version within its member (or the program): 1, 2, 3...
- `id` is the event id, also sent as the `Nats-Msg-Id` header; delivery to consumers is at least
  once, so de-duplicate on it (or on `position`).
- Personal data is never broadcast: identities carry only their `kind`, profiles are left out.
- `hash` and `globalhash` (extensions, hex) are the event's hash in its stream's chain and the
  log's global hash at `position` (ADR 14): globalhash = sha256(previous globalhash || position
  as 8 bytes big-endian || hash), so a subscriber can check the chain of what it received and
  compare it with the signed checkpoints published on the `audit_checkpoint` channel.
- Events committed while NATS was unreachable are published, in order, when it returns.

Segment changes (`segment_entered`, `segment_left`) go to a stream of their own, `{stream}_SEGMENTS`,
on `<segments prefix>.<segment>.<member_id>`, once each and in order; their `position` is
their place in that stream, `data.log_position` the ledger position they were decided at.
"""


def _clean_descriptions(node: Any) -> Any:
    """`node` (a schema, or a map or list of them) with each `description` as `inspect.cleandoc` writes it.

    msgspec copies class docstrings, which are not the same everywhere: Python 3.13 strips their
    indentation at compile time, msgspec 0.23 cleans them, 3.11 with 0.22 keeps it. The committed
    document must not depend on which interpreter or library version wrote it.
    """
    if isinstance(node, list):
        return [_clean_descriptions(value) for value in node]
    if not isinstance(node, dict):
        return node
    cleaned: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            cleaned[key] = inspect.cleandoc(value)
        elif key in _VALUES:
            cleaned[key] = value  # example data, not schemas: a "description" in it is data
        else:
            cleaned[key] = _clean_descriptions(value)
    return cleaned


_VALUES = frozenset({"const", "default", "enum", "examples"})


def main() -> None:
    """Print the document (`python -m service.bus.asyncapi > docs/asyncapi.json`)."""
    sys.stdout.write(render())


def render(settings: Settings | None = None) -> str:
    """The document as the committed file holds it."""
    return json.dumps(asyncapi_document(settings), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    main()
