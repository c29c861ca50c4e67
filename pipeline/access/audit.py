"""kaudit audits its own readers: one JSON line per API request (who, role, clusters allowed, path, query text or
SQL, rows returned, status, elapsed ms, remote address; never a token) and Prometheus counters.

Lines go to the logger ``kaudit.audit`` (stderr with the other logs) and, with ``KAUDIT_API_AUDIT_FILE``, are
appended to that file by a background thread (a QueueListener), so the event loop never waits on the disk; the
file is reopened when logrotate moves it away.
Label values are bounded: reader names come from the readers file (at most ``MAX_READER_LABELS``, then
``other``), unauthenticated requests are ``-``, routes are the router's templates, statuses HTTP codes."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter

log = logging.getLogger("kaudit.audit")

MAX_READER_LABELS = 200
MAX_QUERY_CHARS = 4000

REQUESTS = Counter("kaudit_api_requests", "Query API / dashboard requests, by reader and HTTP status",
                   ["reader", "status"])  # fmt: skip
ROWS = Counter("kaudit_api_rows_returned", "Rows the query API / dashboard returned, by reader", ["reader"])

_labels: set[str] = set()
_labels_lock = threading.Lock()


def reader_label(name: str | None, known: set[str]) -> str:
    """A bounded label: known reader names (the first MAX_READER_LABELS seen), ``-`` for nobody, else ``other``."""
    if not name:
        return "-"
    if name not in known:
        return "other"
    with _labels_lock:
        if name in _labels:
            return name
        if len(_labels) < MAX_READER_LABELS:
            _labels.add(name)
            return name
    return "other"


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


_files: dict[Path, tuple[logging.handlers.QueueListener, logging.Handler, int]] = {}
_files_lock = threading.Lock()


class AuditLog:
    """Writes audit lines; ``close()`` flushes and releases the file (shared by apps writing the same path)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path).resolve() if path else None
        self._handler: logging.Handler | None = None
        if self.path is None:
            return
        with _files_lock:
            entry = _files.get(self.path)
            if entry is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fh = logging.handlers.WatchedFileHandler(self.path, encoding="utf-8")  # reopens after logrotate
                fh.setFormatter(_JsonLines())
                q: queue.SimpleQueue = queue.SimpleQueue()
                listener = logging.handlers.QueueListener(q, fh)
                listener.start()
                entry = (listener, logging.handlers.QueueHandler(q), 0)
            listener, qh, users = entry
            _files[self.path] = (listener, qh, users + 1)
            self._handler = qh

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(record, default=str).decode()
        except TypeError:  # a lone surrogate in the request (JSON "\ud800" in a query): raised, the request went
            line = orjson.dumps(_text_safe(record), default=str).decode()  # unaudited; now it is written, escaped
        log.info("%s", line)
        if self._handler is not None:
            self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO",
                                                        "name": "kaudit.audit"}))  # fmt: skip

    def close(self) -> None:
        if self.path is None or self._handler is None:
            return
        with _files_lock:
            entry = _files.get(self.path)
            if entry is None:
                return
            listener, qh, users = entry
            if users > 1:
                _files[self.path] = (listener, qh, users - 1)
            else:
                del _files[self.path]
                listener.stop()  # drains the queue
                for h in listener.handlers:
                    h.close()
        self._handler = None


def clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_QUERY_CHARS else text[:MAX_QUERY_CHARS] + "…"


def _text_safe(value: Any) -> Any:
    """``value`` with every string made writable: characters UTF-8 cannot hold become backslash escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_text_safe(k): _text_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text_safe(v) for v in value]
    return value
