"""The audit event: pydantic models, file/wire readers, normalization to the flat record, Avro codec."""

from pipeline.models.event import Event, EventList, NormalizedEvent
from pipeline.models.normalize import NormalizeError, normalize_event
from pipeline.models.readers import ParseIssue, read_events

__all__ = [
    "Event",
    "EventList",
    "NormalizedEvent",
    "NormalizeError",
    "ParseIssue",
    "normalize_event",
    "read_events",
]
