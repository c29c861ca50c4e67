"""The model applied to whole audit events (the worker's normalization) and to dead-letter text (whatever a
stage could not process: possibly an event carrying a Secret, possibly not JSON at all)."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.redaction.redact import dispatch, hash_value, ids, implied

_SECRET = implied("", "secrets", "")
# A dead-letter id for objects of an event whose objectRef is unreadable (what they are cannot be told).
UNREADABLE_EVENT_OBJECTS = "event-objects"
WITHHELD = "«withheld by kaudit: not JSON, {n} bytes, {h}; the original is at the record's origin»"


def redact_event_objects(req: Any, resp: Any, group: str, resource: str, subresource: str) -> int:
    """Redact an event's requestObject and responseObject in place; the mask of redacted fields."""
    kind = implied(group, resource, subresource)
    return dispatch(req, kind) | dispatch(resp, kind)


def _s(v: Any) -> str:
    return "" if v is None else v if isinstance(v, str) else str(v)


def _event(ev: dict[str, Any]) -> tuple[int, bool]:
    """(mask, objects hashed whole) for one event-shaped dict of a dead letter, redacted in place."""
    ref = ev.get("objectRef")
    if ref is None or isinstance(ref, dict):
        ref = ref or {}
        group = ref.get("apiGroup")
        version = _s(ref.get("apiVersion"))
        if group is None and "/" in version:
            group = version.rpartition("/")[0]
        return redact_event_objects(
            ev.get("requestObject"), ev.get("responseObject"), _s(group), _s(ref.get("resource")),
            _s(ref.get("subresource")),
        ), False  # fmt: skip
    whole = False
    for root in ("requestObject", "responseObject"):
        if ev.get(root) is not None:
            ev[root] = hash_value(ev[root])
            whole = True
    return 0, whole


def _is_event(d: dict[str, Any]) -> bool:
    return any(k in d for k in ("auditID", "stage", "objectRef", "requestObject", "responseObject"))


class _Scrub:
    def __init__(self) -> None:
        self.mask = 0
        self.whole = False
        self.withheld = 0

    def doc(self, doc: Any) -> Any:
        """A parsed dead-letter document (an event, an EventList, a list, any object), redacted in place."""
        if isinstance(doc, dict):
            items = doc.get("items")
            if isinstance(items, list) and not _is_event(doc):
                for i, it in enumerate(items):
                    items[i] = self.item(it)
            if _is_event(doc):
                m, w = _event(doc)
                self.mask |= m
                self.whole |= w
            else:  # not an event: read as a Secret would be (a bare object in a dead letter is anyone's guess)
                self.mask |= dispatch(doc, _SECRET)
            return doc
        if isinstance(doc, list):
            for i, it in enumerate(doc):
                doc[i] = self.item(it)
            return doc
        if isinstance(doc, str):
            return self.string(doc)
        return doc

    def item(self, it: Any) -> Any:
        return self.string(it) if isinstance(it, str) else self.doc(it)

    def string(self, value: str) -> str:
        """A JSON string in an item's place: redacted inside when it is itself JSON (an event sent as text),
        else kept (complete JSON without structure holds no field of the model)."""
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        before = (self.mask, self.whole, self.withheld)
        doc = self.doc(doc)
        return value if (self.mask, self.whole, self.withheld) == before else orjson.dumps(doc).decode()

    def text(self, text: str) -> str:
        """Text: parsed and redacted when it is JSON, line by line when it is JSON lines; anything else withheld."""
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            before = (self.mask, self.whole, self.withheld)
            doc = self.doc(doc)
            return text if (self.mask, self.whole, self.withheld) == before else orjson.dumps(doc).decode()
        if "\n" not in text.strip():
            if not text.strip():
                return text
            self.withheld += 1
            return WITHHELD.format(n=len(text.encode()), h=hash_value(text))
        return "\n".join(self.text(line) if line.strip() else line for line in text.split("\n"))


def redact_text(text: str) -> tuple[str, list[str], int]:
    """Dead-letter text with every credential of the model redacted: (text, redacted field ids, lines withheld).

    JSON (an event, an EventList, any object, JSON lines) is redacted by the model (an object that is not an
    event as if it were a Secret); an event whose objectRef is unreadable has its objects hashed whole; text that is not JSON cannot be searched for credentials, so it is
    withheld (its size and hash stay; the raw topic or the source file, named by the record's origin, holds it).
    """
    s = _Scrub()
    out = s.text(text)
    names = ids(s.mask)
    if s.whole:
        names.append(UNREADABLE_EVENT_OBJECTS)
    return out, names, s.withheld
