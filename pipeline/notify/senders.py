"""One request to one destination (aiohttp, never blocking the loop). A sender raises ``Retry`` for what may
work later (connection refused, timeout, 408/429/5xx: honouring Retry-After) and ``Permanent`` for what will
not (other 4xx: the destination rejects these bytes); the delivery loop retries or dead-letters accordingly."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from pipeline.notify import payloads as P
from pipeline.notify.routing import Destination


class Retry(Exception):
    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


class Permanent(Exception):
    pass


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    v = resp.headers.get("Retry-After", "")
    try:
        return max(0.0, min(float(v), 300.0)) if v else None
    except ValueError:
        return None


class Sender:
    def __init__(self, dest: Destination, session: aiohttp.ClientSession, dashboard: str, windows: dict[str, int],
                 default_window: int) -> None:  # fmt: skip
        self.dest = dest
        self.session = session
        self.dashboard = dashboard
        self.windows = windows  # rule_id -> window seconds (threshold rules)
        self.default_window = default_window

    def requests(self, alerts: list[dict[str, Any]]) -> list[tuple[bytes, dict[str, str]]]:
        """(body, headers) of the request(s) carrying these alerts (one group)."""
        d = self.dest
        if d.type == "alertmanager":
            now = time.time()
            body = [P.alertmanager_alert(a, d, self.dashboard, self.windows.get(a.get("rule_id", ""), self.default_window), now)
                    for a in alerts]  # fmt: skip
        elif d.type == "slack":
            body = P.slack_message(alerts, d, self.dashboard)
        else:
            body = P.webhook_body(alerts, d, self.dashboard)
        return [(orjson.dumps(body), {})]

    def url(self) -> str:
        return f"{self.dest.url}/api/v2/alerts" if self.dest.type == "alertmanager" else self.dest.url

    async def send(self, alerts: list[dict[str, Any]], redelivery: bool) -> None:
        d = self.dest
        ids = [a["alert_id"] for a in alerts]
        for body, extra in self.requests(alerts):
            headers = {"Content-Type": "application/json", "User-Agent": "kaudit-notify", **d.headers, **extra}
            headers[P.IDEMPOTENCY_HEADER] = P.idempotency_key(ids)
            if redelivery:
                headers[P.REDELIVERY_HEADER] = "1"
            if d.secret:
                ts = int(time.time())
                headers[P.TIMESTAMP_HEADER] = str(ts)
                headers[P.SIGNATURE_HEADER] = P.sign(d.secret, body, ts)
            try:
                async with self.session.post(
                    self.url(), data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=d.timeout_seconds),
                    allow_redirects=False,
                ) as resp:  # fmt: skip
                    text = (await resp.content.read(2000)).decode("utf-8", "replace")
                    if 200 <= resp.status < 300:
                        continue
                    reason = f"HTTP {resp.status}: {text.strip()[:500]}"
                    if resp.status in (408, 425, 429) or resp.status >= 500:
                        raise Retry(reason, _retry_after(resp))
                    raise Permanent(reason)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise Retry(f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__) from None
