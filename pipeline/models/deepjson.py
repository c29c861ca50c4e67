r"""JSON as an API server writes it (what Go reads), read without losing the event around it.

Go's encoder accepts nesting up to 10,000 levels, and an API server logs a PATCH body as the event's
``requestObject`` as it came (before validating it; the request then fails, but it is audited). orjson stops at
1,024 levels, Python's json and msgspec at the interpreter's recursion limit. Without this module one such request
turned its whole webhook batch into a parse error: the bridge answered 500 to every retry, the API server dropped the
batch, and every other event in it (the sender's own included) was never stored; a log line like it was
dead-lettered, and in the worker it raised RecursionError.

``loads`` is ``orjson.loads`` for every ordinary document. For one nested too deep, each object or array that
starts at depth ``CUT`` is found by a bracket scan (strings skipped by a regular expression, no recursion), swapped
for a placeholder string, the rest parsed by orjson, and the placeholders put back as ``orjson.Fragment`` of their
exact text: ``orjson.dumps`` writes the document back byte for byte (event sizes stay exact), and everything that
reads objects sees a value that is not a dict or list (rules find no field in it; the normalizer stores it as cut,
``objects_truncated``, like an object over the size cap).

Lone UTF-16 surrogate escapes (``"\ud800"`` with no low half) are the same story: Go reads each as U+FFFD and
an API server logs a PATCH body with them as it came, while orjson and msgspec refuse the whole document (one
such PATCH made its batch a 400, which the API server retried and dropped). ``loads`` then reads a copy in which
each lone surrogate escape is ``\ufffd``, as Go would decode it (six bytes for six: sizes stay exact). And
numbers: Go's scanner takes any number (``1e400``, a 30-digit integer; an API server logs such a PATCH, then answers
400), orjson refuses one past float64; such a document is read by Python's parser, with those numbers and integers
past 64 bits kept as ``orjson.Fragment`` of their exact text. And bytes that are not UTF-8 inside a string (a PATCH
sent in Latin-1: Go reads the bytes as U+FFFD, applies it, 200, and logs the body as it came): read as U+FFFD.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson

CUT = 64  # depth (1 = the document's own braces) at which deeper values are kept as text
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_TOKENS_KEYS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')


def too_deep(exc: Exception) -> bool:
    """Whether a decoder error is about nesting (orjson's depth limit, or a recursion limit)."""
    return isinstance(exc, RecursionError) or "depth limit" in str(exc) or "recursion" in str(exc).lower()


# a JSON string escape of a backslash, a valid surrogate pair, or a lone surrogate (only the last is replaced)
_SURROGATE = re.compile(rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def go_surrogates(raw: bytes) -> bytes:
    r"""``raw`` with every lone UTF-16 surrogate escape replaced by ``\ufffd``, as Go's decoder reads it."""
    return _SURROGATE.sub(lambda m: m.group() if len(m.group()) != 6 else rb"\ufffd", raw)


def loads(data: bytes | str, *, check: bool = False) -> Any:
    """orjson.loads, also for what Go reads and orjson does not: nesting deeper than orjson allows, lone surrogate
    escapes, numbers past float64 (see the module docstring). Raises orjson.JSONDecodeError for text that is not
    JSON.

    ``check``: also cut a document orjson reads but cannot write back (deeper than 254 levels; one orjson.dumps
    tells): what the worker's Python path normalizes and tests rules on, which serialize objects and recurse
    into them."""
    parse: Callable[[Any], Any] = orjson.loads
    while True:
        try:
            return _loads(data, check, parse)
        except orjson.JSONDecodeError as exc:
            why = str(exc)
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
            if "not valid UTF-8" in why and (fixed := raw.decode("utf-8", "replace").encode()) != raw:
                data = fixed  # bytes that are not UTF-8 in a string: U+FFFD, as the worker's reader decodes them
            elif "surrogate" in why and (fixed := go_surrogates(raw)) != raw:
                data = fixed
            elif "infinity" in why and parse is orjson.loads:  # 1e400: Python's parser, numbers kept as text
                data, parse = go_surrogates(raw), _loads_wide  # (it would keep lone surrogates nothing writes)
            else:
                raise


def _wide_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else orjson.Fragment(text)


def _wide_int(text: str) -> Any:
    if len(text) > 19:  # maybe past 64 bits (orjson cannot write it) or past Python's int() digit limit
        value = int(text) if len(text) <= 21 else None
        return value if value is not None and -(2**63) <= value < 2**64 else orjson.Fragment(text)
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_wide(data: bytes) -> Any:
    """json.loads for a document with numbers past float64 (Go's scanner takes any number): such numbers, and
    integers past 64 bits, become ``orjson.Fragment`` of their exact text."""
    try:
        return json.loads(data, parse_float=_wide_float, parse_int=_wide_int, parse_constant=_no_constant)
    except RecursionError:
        raise orjson.JSONDecodeError("recursion limit: nested too deep", "", 0) from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise orjson.JSONDecodeError(str(exc), "", 0) from None


def _loads(data: bytes | str, check: bool, parse: Callable[[Any], Any] = orjson.loads) -> Any:
    try:
        doc = parse(data)
    except orjson.JSONDecodeError as exc:
        if not too_deep(exc):
            raise
    else:
        if not check:
            return doc
        try:
            orjson.dumps(doc)
            return doc
        except orjson.JSONEncodeError:
            pass  # nested too deep to write: cut below
    raw = data.encode() if isinstance(data, str) else bytes(data)
    spans = _deep_spans(raw)
    if not spans:
        raise orjson.JSONDecodeError("nesting too deep and no value to cut", raw.decode("utf-8", "replace"), 0)
    tag = secrets.token_hex(8)
    parts, pos, kept = [], 0, {}
    for n, (start, end) in enumerate(spans):
        key = f"\u0000kaudit-deep-{tag}-{n}"
        parts += [raw[pos:start], orjson.dumps(key)]
        kept[key] = orjson.Fragment(raw[start:end])
        pos = end
    parts.append(raw[pos:])
    doc = parse(b"".join(parts))  # shallow now; JSONDecodeError if the text was not JSON after all
    return _restore(doc, kept)


def _deep_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of every object or array that opens at depth CUT, outermost only."""
    spans: list[tuple[int, int]] = []
    depth, start = 0, -1
    for m in _TOKENS.finditer(raw):
        c = raw[m.start()]
        if c == 0x22:  # a string: nothing inside counts
            continue
        if c in (0x7B, 0x5B):  # { [
            depth += 1
            if depth == CUT:
                start = m.start()
        else:
            if depth == CUT and start >= 0:
                spans.append((start, m.end()))
                start = -1
            depth -= 1
    return spans


def item_spans(raw: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of each item of an EventList body's top-level ``items`` array, by a bracket scan (any depth);
    None if the body has no such array."""
    spans: list[tuple[int, int]] = []
    depth, key, in_items, start, found = 0, b"", False, -1, False
    for m in _TOKENS_KEYS.finditer(raw):
        c = raw[m.start()]
        if c == 0x22:
            if depth == 1:
                key = m.group()
            continue
        if c in (0x3A, 0x2C):  # : ,
            if c == 0x2C and depth == 1:
                key = b""
            continue
        if c in (0x7B, 0x5B):
            depth += 1
            if depth == 2 and c == 0x5B and key == b'"items"':
                in_items = found = True
            elif depth == 3 and in_items:
                start = m.start()
        else:
            if depth == 3 and in_items and start >= 0:
                spans.append((start, m.end()))
                start = -1
            elif depth == 2 and in_items:
                in_items = False
            depth -= 1
    return spans if found else None


def _restore(doc: Any, kept: dict[str, Any]) -> Any:
    """The placeholders of ``doc`` replaced by their fragments (iterative: the document is CUT levels deep)."""
    if isinstance(doc, str):
        return kept.get(doc, doc)
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            if isinstance(v, str):
                if v in kept:
                    node[k] = kept[v]
            elif isinstance(v, dict | list):
                stack.append(v)
    return doc
