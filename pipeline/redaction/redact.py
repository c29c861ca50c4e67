"""The Python implementation of the redaction model (``pipeline.redaction.model``): the reference that the
native path (``native/src/redact.rs``) matches byte for byte.

Objects are redacted in place (the worker's rules read the same parsed objects, so an alert never sees a
credential either); a redacted value becomes ``sha256:<16 hex>``. Functions return a bit mask of the model's
fields that were redacted (bit i = ``FIELD_IDS[i]``); ``ids(mask)`` names them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.redaction.model import (
    ANY,
    FIELD_IDS,
    GENERIC_LIST,
    KIND_BY_NAME,
    KINDS,
    NOT_IMPLIED,
    TABLE,
    WATCH_EVENT,
    Kind,
    implied_kind,
)  # fmt: skip

BIT = {name: 1 << i for i, name in enumerate(FIELD_IDS)}


def hash_value(value: Any) -> str:
    """``sha256:`` + the first 16 hex digits of SHA-256 of the value's UTF-8 text (any other JSON value: its
    compact JSON). Equal values give equal hashes, so a redacted value can still be correlated."""
    raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class _Leaf:
    bit: int
    embedded: bool


@dataclass(frozen=True, slots=True)
class _Node:
    children: dict[str, Any]  # key (or ANY) -> _Node | _Leaf
    bit: int  # recorded when something other than an object sits where this node expects one


@dataclass(frozen=True, slots=True)
class _Compiled:
    kind: Kind
    tree: _Node
    patch_bit: int


def _compile(kind: Kind) -> _Compiled:
    root: dict[str, Any] = {}
    for f in kind.fields:
        node = root
        for key in f.path[:-1]:
            node = node.setdefault(key, {})
        node[f.path[-1]] = _Leaf(BIT[f.id], f.embedded)

    def build(d: dict[str, Any]) -> _Node:
        children = {k: v if isinstance(v, _Leaf) else build(v) for k, v in d.items()}
        return _Node(children, next(iter(children.values())).bit)

    return _Compiled(kind, build(root), BIT[kind.patch_id])


COMPILED: dict[str, _Compiled] = {k.name: _compile(k) for k in KINDS}
_COMPILED_BY_KIND = {name: COMPILED[name] for name in KIND_BY_NAME}


def ids(mask: int) -> list[str]:
    """The field ids of a mask, in the model's order."""
    return [name for i, name in enumerate(FIELD_IDS) if mask >> i & 1] if mask else []


def implied(group: str, resource: str, subresource: str) -> _Compiled | None:
    k = implied_kind(group, resource, subresource)
    return COMPILED[k.name] if k is not None else None


# ------------------------------------------------------------------------------------------------------------


def _at(value: Any, node: _Node | _Leaf, kind: _Compiled) -> tuple[Any, int]:
    """The value found at ``node``'s place in an object of ``kind``, redacted; and the mask."""
    if type(node) is _Leaf:
        if node.embedded:
            return _embedded(value, node, kind)
        return hash_value(value), node.bit
    if type(value) is dict:
        return value, _apply(value, node, kind)
    if value is None:
        return None, 0
    return hash_value(value), node.bit  # not an object where the model expects one: hashed whole


def _apply(obj: dict, node: _Node, kind: _Compiled) -> int:
    mask = 0
    for key, sub in node.children.items():
        if key == ANY:
            for k, v in obj.items():
                obj[k], m = _at(v, sub, kind)
                mask |= m
        elif key in obj:
            obj[key], m = _at(obj[key], sub, kind)
            mask |= m
    return mask


def _embedded(value: Any, leaf: _Leaf, kind: _Compiled) -> tuple[Any, int]:
    """A field holding an object's JSON text: redact inside it; unreadable text is hashed whole."""
    if value is None:
        return None, 0
    if type(value) is str:
        try:
            inner = orjson.loads(value)
        except orjson.JSONDecodeError:
            inner = None
        if type(inner) is dict:
            m = dispatch(inner, kind)
            if not m:
                return value, 0  # nothing inside: the text stays as the cluster wrote it
            return orjson.dumps(inner).decode(), m | leaf.bit
    return hash_value(value), leaf.bit


def _pointer(path: str) -> list[str] | None:
    """A JSON pointer (RFC 6901) as its reference tokens; None when it is not one."""
    if path == "":
        return []
    if path[0] != "/":
        return None
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _json_patch(ops: list, kind: _Compiled) -> int:
    """A JSON patch (RFC 6902) sent to a credential kind: each operation's value is redacted as the part of the
    object its path points at (a value inside a credential field is hashed whole)."""
    mask = 0
    for i, op in enumerate(ops):
        if type(op) is not dict:
            if op is not None:
                ops[i] = hash_value(op)
                mask |= kind.patch_bit
            continue
        if "value" not in op:
            continue  # remove, move, copy: paths only
        path = op.get("path")
        tokens = _pointer(path) if type(path) is str else None
        if tokens is None:
            op["value"] = hash_value(op["value"])
            mask |= kind.patch_bit
            continue
        node: _Node | _Leaf | None = kind.tree
        below = False
        for t in tokens:
            if type(node) is _Leaf:
                below = True
                break
            nxt = node.children.get(t)  # type: ignore[union-attr]
            node = nxt if nxt is not None else node.children.get(ANY)  # type: ignore[union-attr]
            if node is None:
                break
        if node is None:
            continue  # not under any credential field
        if below:
            op["value"], m = hash_value(op["value"]), node.bit
        else:
            op["value"], m = _at(op["value"], node, kind)
        mask |= m
    return mask


def dispatch(obj: Any, implied_kind_: _Compiled | None) -> int:
    """Redact one object (request or response body, list item, embedded object) in place; the mask."""
    if type(obj) is dict:
        k = obj.get("kind")
        mask = 0
        own = _COMPILED_BY_KIND.get(k) if type(k) is str else None
        if own is not None:
            mask = _apply(obj, own.tree, own)
        elif implied_kind_ is not None and not (type(k) is str and k in NOT_IMPLIED):
            mask = _apply(obj, implied_kind_.tree, implied_kind_)
        items = obj.get("items")
        if type(items) is list and (
            k == GENERIC_LIST
            or (implied_kind_ is not None and (k is None or (type(k) is str and k.endswith("List"))))
            or (type(k) is str and k.endswith("List") and k[:-4] in _COMPILED_BY_KIND)
        ):
            for item in items:
                mask |= dispatch(item, implied_kind_)
        if k == TABLE and implied_kind_ is not None:
            rows = obj.get("rows")
            if type(rows) is list:
                for row in rows:
                    if type(row) is dict:
                        mask |= dispatch(row.get("object"), implied_kind_)
        elif k == WATCH_EVENT:
            mask |= dispatch(obj.get("object"), implied_kind_)
        return mask
    if type(obj) is list and implied_kind_ is not None:
        return _json_patch(obj, implied_kind_)
    return 0
