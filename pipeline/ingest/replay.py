"""Send audit files to a bridge exactly as the kube-apiserver batch webhook backend does.

k8s.io/apiserver plugin/pkg/audit/webhook: one JSON EventList per batch (<= 400 events, items without
kind/apiVersion), Content-Type application/json, bearer token, 30 s timeout, any 2xx = success; anything else is
retried with backoff 10 s x1.5, jitter 0.2, 5 attempts, then the batch is dropped. client-go additionally
re-sends up to 10 times on 429/5xx answers that carry Retry-After. Batches go out concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.models.readers import ParseIssue, read_events

log = logging.getLogger("kaudit.replay")

BATCH_MAX = 400
USER_AGENT = "kube-apiserver/v1.35.0 (linux/amd64) kubernetes/kaudit-replay"
_HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['


def eventlist_body(items: Iterable[dict[str, Any]]) -> bytes:
    """The apiserver's EventList JSON: items carry no kind/apiVersion of their own."""
    parts = []
    for ev in items:
        if "kind" in ev or "apiVersion" in ev:
            ev = {k: v for k, v in ev.items() if k not in ("kind", "apiVersion")}
        parts.append(orjson.dumps(ev))
    return _HEAD + b",".join(parts) + b"]}"


@dataclass
class FileIssue:
    path: str
    line: int
    reason: str


def iter_events(paths: Iterable[str | Path], issues: list[FileIssue] | None = None) -> Iterator[dict[str, Any]]:
    """Every audit event of the files (any shape read_events knows), in file order."""
    for path in paths:
        data = Path(path).read_bytes()
        for item in read_events(data):
            if isinstance(item, ParseIssue):
                if issues is not None:
                    issues.append(FileIssue(str(path), item.line, item.reason))
                continue
            yield item.event


def build_bodies(
    paths: Iterable[str | Path], batch_size: int = BATCH_MAX, issues: list[FileIssue] | None = None
) -> Iterator[tuple[int, bytes]]:
    """(events, EventList body) per batch of up to ``batch_size`` events, across files (like the apiserver's
    buffer, which does not care where events came from). Deterministic: tests rebuild the same bodies."""
    batch: list[dict[str, Any]] = []
    for ev in iter_events(paths, issues):
        batch.append(ev)
        if len(batch) >= batch_size:
            yield len(batch), eventlist_body(batch)
            batch = []
    if batch:
        yield len(batch), eventlist_body(batch)


@dataclass
class RetryPolicy:
    initial_backoff: float = 10.0
    factor: float = 1.5
    jitter: float = 0.2
    attempts: int = 5
    timeout: float = 30.0
    retry_after_max: int = 10  # client-go: re-sends on 429/5xx with Retry-After, per attempt

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt+1`` (0-based attempt that just failed): wait.Backoff semantics."""
        base = self.initial_backoff * self.factor**attempt
        return base + random.random() * self.jitter * base


@dataclass
class ReplayStats:
    events: int = 0
    batches: int = 0
    sent_events: int = 0
    sent_batches: int = 0
    failures: int = 0  # failed attempts (each retried unless it was the last)
    dropped_batches: int = 0
    dropped_events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> str:
        rate = self.sent_events / self.elapsed if self.elapsed else 0.0
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"replay: {self.sent_events}/{self.events} events in {self.sent_batches}/{self.batches} batches "
            f"accepted, {self.failures} failed attempt(s), {self.dropped_batches} batch(es) dropped "
            f"({self.dropped_events} events); {self.elapsed:.1f} s, {rate:,.0f} events/s; answers {{{codes}}}"
        )


class _Pacer:
    """Token bucket in events/s (``--rate``)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(self.next, now)
        self.next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


async def send_batch(session: Any, url: str, body: bytes, headers: dict[str, str], policy: RetryPolicy,
                     stats: ReplayStats, n_events: int) -> bool:  # fmt: skip
    """One batch with the apiserver's retries; True when a 2xx came back."""
    import aiohttp

    for attempt in range(policy.attempts):
        resends = 0
        while True:
            t0 = time.perf_counter()
            status, retry_after, err = 0, None, ""
            try:
                async with session.post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=policy.timeout)
                ) as resp:
                    await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                err = f"{type(exc).__name__}: {exc}"
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if 200 <= status <= 206:
                stats.latencies.append(time.perf_counter() - t0)
                stats.sent_batches += 1
                stats.sent_events += n_events
                return True
            # client-go with_retry: 429/5xx + Retry-After -> sleep and re-send, up to 10 times
            if (status == 429 or status >= 500) and retry_after and resends < policy.retry_after_max:
                try:
                    delay = float(retry_after)
                except ValueError:
                    delay = 1.0
                resends += 1
                await asyncio.sleep(min(delay, policy.timeout))
                continue
            break
        stats.failures += 1
        log.warning(
            "batch of %d events: attempt %d/%d failed: %s", n_events, attempt + 1, policy.attempts,
            err or f"HTTP {status}",
        )  # fmt: skip
        if attempt + 1 < policy.attempts:
            await asyncio.sleep(policy.backoff(attempt))
    stats.dropped_batches += 1
    stats.dropped_events += n_events
    log.error("batch of %d events dropped after %d attempts (as the apiserver would)", n_events, policy.attempts)
    return False


async def replay_bodies(
    url: str, bodies: Iterable[tuple[int, bytes]], *, token: str | None = None, concurrency: int = 4,
    rate: float = 0.0, policy: RetryPolicy | None = None, ssl: Any = None, stats: ReplayStats | None = None,
) -> ReplayStats:  # fmt: skip
    """POST each (events, body) with ``concurrency`` batches in flight."""
    import aiohttp

    policy = policy or RetryPolicy()
    stats = stats or ReplayStats()
    headers = {"Content-Type": "application/json", "Accept": "application/json, */*", "User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    pacer = _Pacer(rate)
    queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=concurrency * 2)
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl if ssl is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while (job := await queue.get()) is not None:
                n, body = job
                await pacer.take(n)
                await send_batch(session, url, body, headers, policy, stats, n)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        for n, body in bodies:
            stats.events += n
            stats.batches += 1
            await queue.put((n, body))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    stats.elapsed = time.perf_counter() - t0
    return stats


def main_replay(
    url: str, paths: list[str], *, token: str | None = None, concurrency: int = 4, rate: float = 0.0,
    policy: RetryPolicy | None = None, batch_size: int = BATCH_MAX, ssl: Any = None,
) -> tuple[ReplayStats, list[FileIssue]]:  # fmt: skip
    issues: list[FileIssue] = []
    bodies = list(build_bodies(paths, batch_size, issues))  # read files before the clock starts
    for it in issues:
        print(f"{it.path}:{it.line}: {it.reason} (not sent)", file=sys.stderr)
    stats = asyncio.run(
        replay_bodies(url, bodies, token=token, concurrency=concurrency, rate=rate, policy=policy, ssl=ssl)
    )
    return stats, issues
