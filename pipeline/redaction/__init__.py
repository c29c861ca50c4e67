"""Credentials never reach Kafka or ClickHouse: the redaction model (``model``), its Python implementation
(``redact``, mirrored by ``native/src/redact.rs``), and its use on whole audit events and dead-letter text."""

from pipeline.redaction.events import redact_event_objects, redact_text
from pipeline.redaction.model import FIELD_IDS
from pipeline.redaction.redact import hash_value, ids

__all__ = ["FIELD_IDS", "hash_value", "ids", "redact_event_objects", "redact_text"]
