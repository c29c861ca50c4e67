"""Ingestion pieces without Kafka: tokens file, certificate identities, item validation, replayer retries."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from pipeline.ingest.bridge.auth import (
    Authenticator,
    TokensFileError,
    cert_clusters,
    is_loopback,
    parse_tokens,
)
from pipeline.ingest.bridge.server import classify, validate_item
from pipeline.ingest.replay import RetryPolicy, build_bodies, eventlist_body, replay_bodies
from pipeline.models.normalize import NormalizeError, normalize_event
from pipeline.models.readers import RawEvent, read_events
from tests.conftest import sample_files


def test_tokens_file_shapes_and_errors(tmp_path: Path) -> None:
    t = parse_tokens(b"clusters:\n  a: x\n  b: [y, z]\ntokens:\n  w: [a, b]\n  admin: '*'\n")
    auth = Authenticator()
    auth._table = t
    assert auth.check("a", "Bearer x", None).status == 0
    assert auth.check("b", "Bearer x", None).status == 403
    assert auth.check("b", "bearer z", None).status == 0
    assert auth.check("b", "Bearer w", None).status == 0
    assert auth.check("zz", "Bearer admin", None).status == 0
    assert auth.check("a", "Bearer nope", None).status == 401
    assert auth.check("a", None, None).status == 401
    assert parse_tokens(b'{"clusters": {"a": "x"}}')  # JSON too
    for bad in (b"clusters: [1, 2]\n", b"other: {}\n", b"clusters:\n  Bad_Name: x\n", b"clusters:\n  a: ''\n", b"{"):
        with pytest.raises(TokensFileError):
            parse_tokens(bad)
    f = tmp_path / "t.yaml"
    f.write_text("clusters: {a: one}\n")
    a = Authenticator(tokens_file=f)
    a.load()
    f.write_text("clusters: {a: two}\n")
    assert a.reload()
    assert a.check("a", "Bearer two", None).status == 0 and a.check("a", "Bearer one", None).status == 401
    f.write_text("clusters: [broken\n")
    assert not a.reload()
    assert a.check("a", "Bearer two", None).status == 0  # kept


def test_cert_identities_and_loopback() -> None:
    cert = {
        "subject": ((("organizationName", "kaudit:cluster:beta"),), (("commonName", "alpha"),)),
        "subjectAltName": (("DNS", "gamma"), ("IP Address", "10.0.0.1")),
    }
    assert cert_clusters(cert) == {"alpha", "beta", "gamma"}
    assert cert_clusters({"subject": ((("organizationName", "kaudit:all-clusters"),),)}) == {"*"}
    assert cert_clusters(None) == frozenset()
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "::", "bridge.example.com"))


def test_every_sample_event_passes_validation_like_normalize() -> None:
    n = 0
    for f in sample_files():
        for item in read_events(f.read_bytes()):
            assert isinstance(item, RawEvent), (f, item)
            assert validate_item(item.event) is None, (f, item.line)
            n += 1
    assert n == 1001


@pytest.mark.parametrize(
    "ev",
    [
        {"stage": "ResponseComplete", "stageTimestamp": "2026-01-01T00:00:00Z"},
        {"auditID": "a", "stage": "Nope", "stageTimestamp": "2026-01-01T00:00:00Z"},
        {"auditID": "a", "stage": "Panic"},
        {"auditID": "a", "stage": "Panic", "stageTimestamp": "soon"},
        {"auditID": "a", "stage": "Panic", "stageTimestamp": "2026-01-01T00:00:00Z", "user": "root"},
        {"auditID": "a", "stage": "Panic", "stageTimestamp": "2026-01-01T00:00:00Z", "objectRef": [1]},
        {"auditID": 5, "stage": "Panic", "stageTimestamp": "2026-01-01T00:00:00Z"},
    ],
)
def test_validation_rejects_what_normalize_rejects(ev: dict) -> None:
    assert validate_item(ev) is not None
    with pytest.raises(NormalizeError):
        normalize_event(ev, "c")


def test_fast_path_agrees_with_the_exact_path() -> None:
    """msgspec path (when installed) accepts exactly what the orjson + validate_item path accepts, or defers."""
    from pipeline.ingest.bridge.server import _classify_fast

    ok = {"auditID": "a", "stage": "Panic", "stageTimestamp": "2026-01-01T00:00:00.000001Z"}
    bodies = [b for f in sample_files() for _, b in build_bodies([f], 50)]
    bodies += [eventlist_body([ok, {**ok, "user": "x"}]), eventlist_body([{**ok, "stageTimestamp": "2026-13-45"}]),
               eventlist_body([{**ok, "stageTimestamp": None, "metadata": {"creationTimestamp": "2017-01-01T00:00:00Z"}}]),
               eventlist_body([{**ok, "auditID": ""}]), eventlist_body([{**ok, "objectRef": []}])]  # fmt: skip
    for body in bodies:
        quick = _classify_fast(body)
        if quick is not None:
            assert quick == classify(body, fast=False)


def test_classify_shapes() -> None:
    ev = {"auditID": "a", "stage": "Panic", "stageTimestamp": "2026-01-01T00:00:00Z"}
    assert classify(orjson.dumps({"kind": "EventList", "items": [ev, 1]}))[:2] == ("eventlist", 1)
    assert classify(orjson.dumps({"kind": "EventList", "items": None})) == ("eventlist", 0, [])
    assert classify(orjson.dumps({**ev, "kind": "Event"})) == ("event", 1, [])
    fmt, good, bad = classify(orjson.dumps({"auditID": "a", "stage": "Panic"}))
    assert (fmt, good, [b[0] for b in bad]) == ("event", 0, [-1])


def test_replay_bodies_are_apiserver_eventlists() -> None:
    f = next(p for p in sample_files() if p.name == "demo-k8s-1.8-v1beta1.log")
    bodies = list(build_bodies([f]))
    assert [n for n, _ in bodies] == [400, 357]
    for n, body in bodies:
        doc = orjson.loads(body)
        assert (doc["kind"], doc["apiVersion"], doc["metadata"]) == ("EventList", "audit.k8s.io/v1", {})
        assert len(doc["items"]) == n
        assert not any("kind" in i or "apiVersion" in i for i in doc["items"])
    assert eventlist_body([]) == b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[]}'
    assert build_bodies([f]).__next__() == bodies[0]  # deterministic


def test_backoff_is_the_apiservers() -> None:
    p = RetryPolicy()
    for attempt, base in enumerate((10, 15, 22.5, 33.75)):
        assert base <= p.backoff(attempt) <= base * 1.2


def test_replay_retries_then_drops(tmp_path: Path) -> None:
    """A receiver that fails twice then accepts; one that always says 400; 503 + Retry-After is re-sent."""
    seen: dict[str, int] = {}

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer T"
        assert request.headers["User-Agent"].startswith("kube-apiserver/")
        key = request.match_info["mode"]
        seen[key] = seen.get(key, 0) + 1
        assert orjson.loads(body)["kind"] == "EventList"
        if key == "flaky" and seen[key] <= 2:
            return web.Response(status=500)
        if key == "busy" and seen[key] <= 3:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if key == "bad":
            return web.Response(status=400)
        return web.Response(status=200)

    async def go() -> dict:
        app = web.Application()
        app.router.add_post("/audit/{mode}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        bodies = [(1, eventlist_body([{"auditID": "x"}]))]
        policy = RetryPolicy(initial_backoff=0.01)
        out = {}
        for mode in ("flaky", "busy", "bad"):
            out[mode] = await replay_bodies(f"http://127.0.0.1:{port}/audit/{mode}", bodies, token="T", policy=policy)
        await runner.cleanup()
        return out

    out = asyncio.run(go())
    assert (out["flaky"].failures, out["flaky"].dropped_batches, out["flaky"].sent_events) == (2, 0, 1)
    assert (out["busy"].failures, out["busy"].dropped_batches, seen["busy"]) == (0, 0, 4)
    assert (out["bad"].failures, out["bad"].dropped_batches, seen["bad"]) == (5, 1, 5)


def test_replay_reads_gzip_and_cli_exit_code(tmp_path: Path) -> None:
    f = tmp_path / "a.log.gz"
    f.write_bytes(gzip.compress(b'{"auditID":"a","stage":"Panic","kind":"Event"}\n'))
    [(n, body)] = list(build_bodies([f]))
    assert n == 1 and b'"kind":"Event"' not in body
    from pipeline.cli import main

    # nothing listens on port 9: every attempt fails, the batch is dropped -> exit 1
    assert main(["replay", "--url", "http://127.0.0.1:9/audit/x", "--initial-backoff", "0.01", "--attempts", "2",
                 "--timeout", "2", str(f)]) == 1  # fmt: skip
