"""The webhook bridge against the real Kafka broker: fidelity, auth (tokens, mTLS), bad input, dead-letter."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.config import Settings
from pipeline.ingest.bridge import Authenticator, Bridge, BridgeOptions, make_ssl_context
from pipeline.ingest.bridge.threaded import bridge_thread
from pipeline.ingest.replay import RetryPolicy, build_bodies, replay_bodies
from pipeline.ingest.testing import make_pki, read_topic
from tests.conftest import SAMPLES, sample_files

pytestmark = pytest.mark.kafka

TOKENS = """\
clusters:
  alpha: tok-alpha
  beta: [tok-beta-1, tok-beta-2]
tokens:
  tok-fleet: [alpha, beta]
  tok-admin: "*"
"""

EV = {
    "level": "Metadata", "auditID": "11111111-2222-3333-4444-555555555555", "stage": "ResponseComplete",
    "requestURI": "/api/v1/pods", "verb": "list", "user": {"username": "alice"},
    "requestReceivedTimestamp": "2026-01-01T00:00:00.000001Z", "stageTimestamp": "2026-01-01T00:00:00.000002Z",
}  # fmt: skip


def eventlist(*items: object) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": list(items)})


def post(url: str, body: bytes, *, token: str | None = "tok-admin", ctype: str | None = "application/json",
         headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict, dict]:  # fmt: skip
    h = dict(headers or {})
    if ctype:
        h["Content-Type"] = ctype
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return r.status, orjson.loads(r.read() or b"{}"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}"), dict(e.headers)


@pytest.fixture()
def tokens_file(tmp_path: Path) -> Path:
    p = tmp_path / "tokens.yaml"
    p.write_text(TOKENS)
    return p


def make_bridge(settings: Settings, tokens_file: Path | None, *, mtls: bool = False, **kw) -> Bridge:
    auth = Authenticator(tokens_file=tokens_file, mtls=mtls, enabled=tokens_file is not None or mtls)
    auth.load()
    return Bridge(settings, auth, BridgeOptions(retry_after=1, readiness_interval=0.5), **kw)


@pytest.fixture()
def bridge_url(settings: Settings, tokens_file: Path):
    with bridge_thread(make_bridge(settings, tokens_file)) as url:
        yield url


def raw(settings: Settings, **kw):
    return read_topic(settings.kafka_bootstrap, settings.topic(config.RAW), **kw)


def dlq(settings: Settings, **kw):
    return read_topic(settings.kafka_bootstrap, settings.topic(config.DEADLETTER), **kw)


def test_every_sample_replayed_comes_back_byte_exact(settings: Settings, bridge_url: str) -> None:
    """Each sample folder is one cluster; each file is replayed on its own (one or more batches)."""
    sent: dict[str, list[bytes]] = {}
    total_events = 0
    for f in sample_files():
        cluster = f.parent.name
        bodies = list(build_bodies([f]))
        assert bodies, f
        total_events += sum(n for n, _ in bodies)
        stats = asyncio.run(
            replay_bodies(f"{bridge_url}/audit/{cluster}", bodies, token="tok-admin", concurrency=4,
                          policy=RetryPolicy(initial_backoff=0.1))  # fmt: skip
        )
        assert stats.dropped_batches == 0 and stats.failures == 0
        sent.setdefault(cluster, []).extend(b for _, b in bodies)
    assert total_events == 1001  # SOURCES.md: 1,001 events
    n = sum(len(v) for v in sent.values())
    recs = raw(settings, expect=n)
    assert len(recs) == n
    got: dict[str, list[bytes]] = {}
    for r in recs:
        cluster = r.key.decode()
        assert r.headers["kaudit-cluster"] == cluster
        assert r.headers["kaudit-source"] == "webhook"
        assert r.headers["kaudit-format"] == "eventlist"
        assert "kaudit-skip-items" not in r.headers
        assert len(r.headers["kaudit-batch-id"]) == 32
        assert abs(int(r.headers["kaudit-received-at"]) / 1e6 - time.time()) < 600
        got.setdefault(cluster, []).append(r.value)
    assert {c: Counter(v) for c, v in got.items()} == {c: Counter(v) for c, v in sent.items()}
    # one cluster always lands on one raw partition (dedup stays local)
    assert all(len({r.partition for r in recs if r.key == c.encode()}) == 1 for c in sent)
    assert sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()) == sorted(sent)


def test_auth_tokens(settings: Settings, bridge_url: str, tokens_file: Path) -> None:
    body = eventlist(EV)
    assert post(f"{bridge_url}/audit/alpha", body, token=None)[0] == 401
    code, err, hdrs = post(f"{bridge_url}/audit/alpha", body, token="nope")
    assert code == 401 and err["reason"] == "unauthorized" and "Bearer" in hdrs["WWW-Authenticate"]
    assert post(f"{bridge_url}/audit/alpha", body, token=None, headers={"Authorization": "Basic eDp5"})[0] == 401
    code, err, _ = post(f"{bridge_url}/audit/beta", body, token="tok-alpha")
    assert code == 403 and "beta" in err["error"]
    assert post(f"{bridge_url}/audit/gamma", body, token="tok-fleet")[0] == 403
    ok = [("alpha", "tok-alpha"), ("beta", "tok-beta-2"), ("beta", "tok-fleet"), ("gamma", "tok-admin")]
    for cluster, tok in ok:
        assert post(f"{bridge_url}/audit/{cluster}", body, token=tok)[0] == 200, (cluster, tok)
    # the file is re-read when it changes: tok-alpha revoked, tok-new added
    tokens_file.write_text("clusters:\n  alpha: tok-new\n")
    deadline = time.monotonic() + 10
    while post(f"{bridge_url}/audit/alpha", body, token="tok-new")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert post(f"{bridge_url}/audit/alpha", body, token="tok-new")[0] == 200
    assert post(f"{bridge_url}/audit/alpha", body, token="tok-alpha")[0] == 401
    # a broken file keeps the previous tokens
    tokens_file.write_text("clusters: [not, a, mapping\n")
    time.sleep(1.5)
    assert post(f"{bridge_url}/audit/alpha", body, token="tok-new")[0] == 200
    recs = raw(settings, expect=len(ok) + 3)
    assert Counter(r.key for r in recs) == Counter({b"alpha": 4, b"beta": 2, b"gamma": 1})


def test_bad_input_is_refused_and_nothing_produced(settings: Settings, tokens_file: Path) -> None:
    s = settings.model_copy(update={"bridge_max_body_bytes": 64 * 1024})
    with bridge_thread(make_bridge(s, tokens_file)) as url:
        u = f"{url}/audit/alpha"
        cases = [
            (b"not json", {}, 400, "bad_json"),
            (b"[1, 2]", {}, 400, "not_audit"),
            (b'{"hello": "world"}', {}, 400, "not_audit"),
            (b'{"kind": "EventList", "items": 5}', {}, 400, "not_audit"),
            (b"x" * (64 * 1024 + 1), {}, 413, "too_large"),
            (gzip.compress(b" " * (50 * 1024 * 1024), 9), {"Content-Encoding": "gzip"}, 413, "gzip_too_large"),
            (b"\x1f\x8bnot really gzip", {"Content-Encoding": "gzip"}, 400, "bad_gzip"),
            (eventlist(EV), {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
        ]
        for body, hdrs, code, reason in cases:
            got, err, _ = post(u, body, headers=hdrs)
            assert (got, err.get("reason")) == (code, reason), (body[:40], err)
            assert err["error"]
        got, err, _ = post(u, eventlist(EV), ctype="text/plain")
        assert (got, err["reason"]) == (415, "unsupported_media")
        got, err, _ = post(f"{url}/audit/Not_A_Cluster", eventlist(EV))
        assert (got, err["reason"]) == (400, "bad_cluster")
        # gzip accepted and stored decompressed; an empty EventList is fine and stores nothing
        good = eventlist(EV, {**EV, "stage": "ResponseStarted"})
        assert post(u, gzip.compress(good), headers={"Content-Encoding": "gzip"})[0] == 200
        assert post(u, eventlist())[0] == 200
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
        assert 'kaudit_bridge_rejections_total{reason="gzip_too_large"} 1.0' in metrics
        assert 'kaudit_bridge_events_total{cluster="alpha"} 2.0' in metrics
    recs = raw(settings, expect=1)
    assert [r.value for r in recs] == [good]
    assert dlq(settings) == []


def test_mixed_good_and_bad_items(settings: Settings, bridge_url: str) -> None:
    items = [
        EV,
        {**EV, "auditID": None},
        {**EV, "auditID": "b", "stage": "Started"},
        "just a string",
        {**EV, "auditID": "c", "requestReceivedTimestamp": "yesterday"},
        {**EV, "auditID": "d", "requestReceivedTimestamp": None, "stageTimestamp": None},
        {**EV, "auditID": "e", "stage": "ResponseStarted"},
    ]
    body = eventlist(*items)
    code, answer, _ = post(f"{bridge_url}/audit/beta", body)
    assert code == 200 and answer["accepted"] == 2 and answer["deadletter"] == 5
    [rec] = raw(settings, expect=1)
    assert rec.value == body
    assert rec.headers["kaudit-skip-items"] == "1,2,3,4,5"
    dead = dlq(settings, expect=5)
    assert len(dead) == 5
    reasons = {}
    for d in dead:
        v = orjson.loads(d.value)
        assert v["stage"] == "bridge" and v["cluster"] == "beta" and d.key == b"beta"
        assert v["origin"].startswith(f"webhook:beta:{answer['batch_id']}#")
        assert d.headers["kaudit-reason"] == v["reason"]
        reasons[int(v["origin"].rsplit("#", 1)[1])] = (v["reason"], v["data"])
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert reasons[1][0] == "missing auditID"
    assert "Started" in reasons[2][0]
    assert reasons[3] == ("item is a JSON str, not an object", '"just a string"')
    assert "RFC 3339" in reasons[4][0]
    assert "no timestamp" in reasons[5][0]


def test_twenty_concurrent_batches(settings: Settings, bridge_url: str) -> None:
    import aiohttp

    bodies = [eventlist(*({**EV, "auditID": f"{i}-{j}"} for j in range(50))) for i in range(20)]

    async def go() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one(b: bytes) -> int:
                async with session.post(f"{bridge_url}/audit/alpha", data=b, headers={
                    "Content-Type": "application/json", "Authorization": "Bearer tok-alpha"}) as r:  # fmt: skip
                    return r.status
            return await asyncio.gather(*(one(b) for b in bodies))

    assert asyncio.run(go()) == [200] * 20
    recs = raw(settings, expect=20)
    assert Counter(r.value for r in recs) == Counter(bodies)
    metrics = urllib.request.urlopen(f"{bridge_url}/metrics").read().decode()
    assert 'kaudit_bridge_events_total{cluster="alpha"} 1000.0' in metrics
    assert 'kaudit_bridge_batches_total{cluster="alpha"} 20.0' in metrics
    assert "kaudit_bridge_in_flight_batches 0.0" in metrics
    assert "kaudit_bridge_kafka_ack_seconds_count 20.0" in metrics


def test_health_and_readiness(bridge_url: str) -> None:
    assert orjson.loads(urllib.request.urlopen(f"{bridge_url}/healthz").read()) == {"ok": True}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert orjson.loads(urllib.request.urlopen(f"{bridge_url}/readyz").read()) == {"ready": True}
            break
        except urllib.error.HTTPError:
            time.sleep(0.2)
    else:
        pytest.fail("bridge never became ready")


def test_mtls_client_certificates(settings: Settings, tmp_path: Path, tokens_file: Path) -> None:
    pki = make_pki(tmp_path / "pki", {"alpha": "/CN=alpha", "fleet": "/O=kaudit:all-clusters/CN=robot",
                                      "viaorg": "/O=kaudit:cluster:beta/CN=someone"})  # fmt: skip
    rogue = make_pki(tmp_path / "rogue", {"alpha": "/CN=alpha"})
    server_ctx = make_ssl_context(str(pki["server.crt"]), str(pki["server.key"]), str(pki["ca"]))

    def client(name: str | None, p: dict = pki) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        if name:
            ctx.load_cert_chain(str(p[f"{name}.crt"]), str(p[f"{name}.key"]))
        return ctx

    body = eventlist(EV)
    with bridge_thread(make_bridge(settings, tokens_file, mtls=True), ssl_context=server_ctx) as url:
        assert url.startswith("https://")
        assert post(f"{url}/audit/alpha", body, token=None, context=client("alpha"))[0] == 200
        code, err, _ = post(f"{url}/audit/beta", body, token=None, context=client("alpha"))
        assert code == 403 and "certificate" in err["error"]
        assert post(f"{url}/audit/beta", body, token=None, context=client("fleet"))[0] == 200
        assert post(f"{url}/audit/beta", body, token=None, context=client("viaorg"))[0] == 200
        assert post(f"{url}/audit/alpha", body, token=None, context=client("viaorg"))[0] == 403
        assert post(f"{url}/audit/alpha", body, token=None, context=client(None))[0] == 401
        assert post(f"{url}/audit/alpha", body, token="tok-alpha", context=client(None))[0] == 200
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            post(f"{url}/audit/alpha", body, token=None, context=client("alpha", rogue))
    recs = raw(settings, expect=4)
    assert Counter(r.key for r in recs) == Counter({b"alpha": 2, b"beta": 2})


def test_no_auth_only_on_loopback(settings: Settings) -> None:
    from pipeline.cli import main

    assert main(["bridge", "--no-auth", "--host", "0.0.0.0", "--kafka", settings.kafka_bootstrap]) == 2
    assert main(["bridge", "--host", "127.0.0.1", "--kafka", settings.kafka_bootstrap]) == 2  # no auth configured


def test_a_bearer_token_that_is_not_utf8_is_a_401(settings: Settings, tokens_file: Path) -> None:
    """Header bytes that are not UTF-8 reach the handler as surrogate escapes; hashing such a token raised (a 500).
    Raw HTTP, since a client library would encode the header itself."""
    import socket
    import urllib.parse

    body = b'{"kind":"EventList","items":[]}'
    with bridge_thread(make_bridge(settings, tokens_file)) as url:
        u = urllib.parse.urlsplit(url)
        for auth in (b"Bearer \xff\xfe", b"Bearer caf\xc3\xa9", b"\xff"):
            with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
                sock.sendall(b"POST /audit/alpha HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
                             + auth + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)  # fmt: skip
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            assert reply.split(b"\r\n")[0] == b"HTTP/1.1 401 Unauthorized", (auth, reply[:200])
            assert b'"reason"' in reply
