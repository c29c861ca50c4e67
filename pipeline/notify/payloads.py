"""What each destination receives: the who/what/where text, Alertmanager alerts, Slack messages, webhook bodies
and their HMAC signature. Pure functions (no I/O), unit-tested on their own."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from pipeline.notify.routing import Destination

SIGNATURE_HEADER = "X-Kaudit-Signature"  # "sha256=<hex>" of HMAC-SHA256(key, "<timestamp>.<body>")
TIMESTAMP_HEADER = "X-Kaudit-Timestamp"  # unix seconds; receivers reject old ones (replay protection)
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the same for every attempt of one request's alert ids
REDELIVERY_HEADER = "X-Kaudit-Redelivery"  # "1": an earlier attempt may have been received (crash mid-request)

_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def iso(us: int) -> str:
    """RFC 3339 UTC with milliseconds (what Alertmanager's API takes)."""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def is_windowed(alert: dict[str, Any]) -> bool:
    """Threshold (and query) alerts describe a time window and resolve; event alerts are one action."""
    return int(alert.get("window_start") or 0) > 0


def alert_labels(alert: dict[str, Any]) -> dict[str, str]:
    """Labels (Alertmanager's, and what routes' ``labels`` match): from the rule, severity, cluster, user.

    ``alert_id`` is a label so that Alertmanager keeps each alert id apart (and dedups a re-post of one)."""
    labels = {
        "alertname": alert.get("rule_id", ""),
        "rule_id": alert.get("rule_id", ""),
        "severity": alert.get("severity", ""),
        "cluster": alert.get("cluster", ""),
        "user": alert.get("username", ""),
        "namespace": alert.get("objectref_namespace", ""),
        "resource": alert.get("objectref_resource", ""),
        "verb": alert.get("verb", ""),
        "kind": "threshold" if is_windowed(alert) else "event",
        "tags": ",".join(alert.get("tags") or ()),
        "alert_id": alert.get("alert_id", ""),
        "source": "kaudit",
    }
    if alert.get("group_key"):
        labels["group"] = str(alert["group_key"])
    return {k: v for k, v in labels.items() if v != ""}


def dashboard_link(base: str, alert: dict[str, Any]) -> str:
    """The dashboard view of an alert: its event for event alerts, the alert's events for windowed ones."""
    if not base:
        return ""
    if alert.get("auditid") and not is_windowed(alert):
        q = urlencode({"auditid": alert["auditid"], "cluster": alert.get("cluster", "")}, quote_via=quote)
        return f"{base}/#/event?{q}"
    return f"{base}/#/events?{urlencode({'alert': alert.get('alert_id', '')}, quote_via=quote)}"


def _obj(alert: dict[str, Any]) -> str:
    res = alert.get("objectref_resource") or "?"
    if alert.get("objectref_subresource"):
        res += "/" + alert["objectref_subresource"]
    if alert.get("objectref_apigroup"):
        res += "." + alert["objectref_apigroup"]
    name = alert.get("objectref_name")
    return f"{res} {name}" if name else res


def who(alert: dict[str, Any]) -> str:
    user = alert.get("username") or "(unknown user)"
    if alert.get("impersonated_username"):
        user += f" as {alert['impersonated_username']}"
    ips = alert.get("sourceips") or []
    if ips:  # the last is the peer the API server saw; the others are the client's X-Forwarded-For
        user += f" from {ips[-1]}" + (f" (X-Forwarded-For {', '.join(ips[:-1][:3])})" if len(ips) > 1 else "")
    return user


def what(alert: dict[str, Any]) -> str:
    text = f"{alert.get('verb') or '?'} {_obj(alert)}"
    code = alert.get("responsestatus_code") or 0
    if code:
        text += f" (HTTP {code}{', ' + alert['decision'] if alert.get('decision') else ''})"
    if is_windowed(alert):
        text = f"{alert.get('count', 0)} matching requests in the window from {iso(int(alert['window_start']))}"
        if alert.get("group_key"):
            text += f" for {alert['group_key']}"
        text += f"; last: {alert.get('verb') or '?'} {_obj(alert)}"
    return text


def where(alert: dict[str, Any]) -> str:
    ns = alert.get("objectref_namespace")
    return f"cluster {alert.get('cluster') or '?'}" + (f", namespace {ns}" if ns else "")


def summary(alert: dict[str, Any]) -> str:
    return f"[{alert.get('severity', '?')}] {alert.get('title') or alert.get('rule_id')}: {who(alert)} {what(alert)} in {where(alert)}"


def alertmanager_alert(
    alert: dict[str, Any], dest: Destination, dashboard: str, window_seconds: int, now: float | None = None
) -> dict[str, Any]:
    """One alert of Alertmanager's v2 API (``POST /api/v2/alerts`` takes a list of these).

    Windowed alerts get ``endsAt``: the window's end, but at least ``min_firing_seconds`` after sending, since
    Alertmanager never notifies an alert that reaches it already resolved. Event alerts have none (Alertmanager
    resolves them after its ``resolve_timeout``)."""
    now = time.time() if now is None else now
    labels = {**alert_labels(alert), **dest.labels}
    link = dashboard_link(dashboard, alert)
    annotations = {
        "summary": summary(alert),
        "title": alert.get("title", ""),
        "who": who(alert),
        "what": what(alert),
        "where": where(alert),
        "auditid": alert.get("auditid", ""),
        "useragent": alert.get("useragent", ""),
        "request_uri": alert.get("request_uri", "")[:1000],
        "dashboard": link,
    }
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": iso(int(alert.get("ts") or now * 1e6)),
    }
    if link:
        out["generatorURL"] = link
    if is_windowed(alert):
        end = int(alert["window_start"]) + window_seconds * 1_000_000
        out["endsAt"] = iso(max(end, int((now + dest.min_firing_seconds) * 1e6)))
    return out


def slack_message(alerts: list[dict[str, Any]], dest: Destination, dashboard: str) -> dict[str, Any]:
    """One Slack-compatible incoming-webhook message (``text`` in Slack mrkdwn) for a group of alerts."""
    lines = []
    for a in alerts[:20]:
        link = dashboard_link(dashboard, a)
        title = a.get("title") or a.get("rule_id")
        head = f"<{link}|{_esc(title)}>" if link else f"*{_esc(title)}*"
        lines.append(f"{_emoji(a.get('severity', ''))} {head} [{a.get('severity')}] {_esc(who(a))} {_esc(what(a))} in {_esc(where(a))}")
    if len(alerts) > 20:
        lines.append(f"... and {len(alerts) - 20} more")
    msg: dict[str, Any] = {"text": "\n".join(lines)}
    if dest.channel:
        msg["channel"] = dest.channel
    if dest.username:
        msg["username"] = dest.username
    return msg


def _esc(text: str) -> str:
    """Slack's three control characters (a user name like <!channel> must not ping anyone)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _emoji(sev: str) -> str:
    return {"critical": ":rotating_light:", "high": ":red_circle:", "medium": ":large_orange_circle:"}.get(sev, ":large_blue_circle:")


def webhook_body(alerts: list[dict[str, Any]], dest: Destination, dashboard: str) -> dict[str, Any]:
    """Generic webhook JSON: the alerts as kaudit stores them, plus the text and the dashboard link."""
    return {
        "version": 1,
        "receiver": dest.name,
        "alerts": [{**a, "summary": summary(a), "dashboard_url": dashboard_link(dashboard, a)} for a in alerts],
    }


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``b"<timestamp>." + body`` (the timestamp is signed too, so an
    old request cannot be replayed with a fresh timestamp)."""
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, timestamp: str, signature: str, max_age: float = 300.0) -> bool:
    """What a receiver does (and the tests): constant-time compare, and reject stale timestamps."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > max_age:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


def idempotency_key(alert_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(alert_ids)).encode()).hexdigest()


def group_key(alert: dict[str, Any], fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(alert.get(f, "")) for f in fields)
