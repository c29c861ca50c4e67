"""The specialised condition predicates (and the cheap-first ordering) answer exactly like the general ones."""

from __future__ import annotations

import itertools

import pytest

from pipeline.agents import conditions as C
from pipeline.agents.conditions import EventView, compile_condition

VALUES = ["", "get", "403", "0403", "system:anonymous", "system:node:n1", "x-system:", 403, 0, 401, True, False, None,
          1.5, ["get"], [], {"a": 1}, ["system:masters", "x"], ["system:masters", 3], ["a", None], "10.0.0.1",
          "8.8.8.8", "not-an-ip"]  # fmt: skip
CONDITIONS = [
    {"verb": "get"},
    {"verb": {"in": ["get", "list", "403"]}},
    {"verb": {"not_in": ["get", "list"]}},
    {"verb": {"not_equals": "get"}},
    {"responsestatus_code": 403},
    {"responsestatus_code": {"in": ["403", 401, "0403"]}},
    {"responsestatus_code": {"not_in": [403]}},
    {"username": {"startswith": ["system:node:", "system:anonymous"]}},
    {"username": {"not_startswith": "system:"}},
    {"username": {"endswith": ["anonymous", "403"]}},
    {"username": {"not_endswith": "x"}},
    {"impersonated_username": {"exists": True}},
    {"impersonated_username": {"exists": False}},
    {"usergroups": "system:masters"},
    {"usergroups": {"in": ["system:masters", "get"]}},
    {"usergroups": {"not_in": ["system:masters"]}},
    {"sourceips": {"in_cidr": ["10.0.0.0/8"]}},
    {"sourceip": {"exists": True, "not_in_cidr": ["10.0.0.0/8"]}},
    {"any": [{"username": "system:anonymous"}, {"usergroups": "system:unauthenticated"}], "decision": "allow",
     "request_path": {"not_in": ["/healthz"]}},
    {"not": {"verb": "get"}, "request_object.kind": "Pod", "any": [{"verb": "get"}, {"verb": "403"}, {"username": ""}]},
]  # fmt: skip
FIELDS = ["verb", "responsestatus_code", "username", "impersonated_username", "usergroups", "sourceips", "decision"]


def _events():
    for field, value in itertools.product(FIELDS, VALUES):
        yield {field: value, "request_uri": "/api/v1/pods"}
    yield {"verb": "get", "username": "system:anonymous", "usergroups": ["system:unauthenticated"], "decision": "allow",
           "request_uri": "/api", "sourceips": ["8.8.8.8"]}  # fmt: skip


def _outcome(pred, view):
    try:
        return pred(view)
    except Exception as exc:  # noqa: BLE001 - odd value types: both must fail alike
        return type(exc)


@pytest.mark.parametrize("cond", CONDITIONS, ids=range(len(CONDITIONS)))
def test_fast_predicates_agree_with_general_ones(cond, monkeypatch):
    fast = compile_condition(cond, "match")
    monkeypatch.setattr(C, "FAST_PATHS", False)
    general = compile_condition(cond, "match")
    for ev in _events():
        raw = {"requestObject": {"kind": "Pod"}}
        assert _outcome(fast, EventView(ev, raw)) == _outcome(general, EventView(ev, raw)), ev
        assert _outcome(fast, EventView(ev)) == _outcome(general, EventView(ev)), ev
