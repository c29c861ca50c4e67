"""The notify routing file (YAML): destinations, and routes that pick destinations by rule, severity, cluster,
user and labels. Parsed once at startup; every mistake is a ``RoutingError`` naming the file and the key.

    dashboard_url: https://kaudit.example.com      # links in messages (default KAUDIT_NOTIFY_DASHBOARD_URL)
    destinations:
      am:                                         # a name of your choice, used by routes
        type: alertmanager                        # alertmanager | slack | webhook
        url: http://alertmanager:9093             # alertmanager: base URL (POST <url>/api/v2/alerts)
        labels: {team: platform}                  # alertmanager: extra labels on every alert
        min_firing_seconds: 300                   # alertmanager: a windowed alert fires at least this long
      chat:
        type: slack                               # any Slack-compatible incoming webhook (Mattermost, ...)
        url: https://hooks.slack.com/services/T/B/X
        channel: "#k8s-audit"                     # optional
      siem:
        type: webhook                             # generic JSON webhook
        url: https://siem.example.com/hook
        secret_env: SIEM_HMAC_KEY                 # optional HMAC-SHA256 key (X-Kaudit-Signature header)
        headers: {Authorization: "Bearer ${SIEM_TOKEN}"}   # ${VAR} is read from the environment
    routes:                                       # in order; every matching route adds its destinations
      - match: {min_severity: high}               # rule, severity, min_severity, cluster, user, labels
        to: [am, chat]
      - match: {cluster: "prod-*", rule: [secret-read, pod-exec]}
        to: [siem]
        stop: true                                # later routes are not looked at
    default: [am]                                 # when no route matched ([] = deliver nowhere)

Every destination also takes (defaults shown): ``rate_per_second: 10`` and ``burst: 20`` (requests),
``group_by: [rule_id, cluster]``, ``group_max: 50`` (alerts per request), ``group_wait_seconds: 0.5``,
``timeout_seconds: 10``, ``retry_initial_seconds: 0.5``, ``retry_max_seconds: 30``, ``give_up_seconds: 3600``
(then a dead-letter record says why), ``max_pending: 10000`` (a destination's backlog: while the destination
answers, reading pauses there, back-pressure; while it fails, the oldest beyond it are dead-lettered so that one
dead destination cannot hold the others' offsets forever).
Values in ``match`` are a string or a list of strings; ``*``/``?`` are glob patterns. ``labels`` matches any
alert label (see ``payloads.alert_labels``; ``tag`` matches each of the rule's tags).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pipeline.agents.rules import SEVERITIES

TYPES = ("alertmanager", "slack", "webhook")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MATCH_KEYS = {"rule", "severity", "min_severity", "cluster", "user", "labels"}
GROUP_FIELDS = {"rule_id", "cluster", "severity", "username", "objectref_namespace", "alert_id"}


class RoutingError(ValueError):
    """A routing file that cannot be used; the message names the file and the key."""


@dataclass
class Destination:
    name: str
    type: str
    url: str
    rate_per_second: float = 10.0
    burst: int = 20
    group_by: tuple[str, ...] = ("rule_id", "cluster")
    group_max: int = 50
    group_wait_seconds: float = 0.5
    timeout_seconds: float = 10.0
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    give_up_seconds: float = 3600.0
    max_pending: int = 10_000
    headers: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # alertmanager
    min_firing_seconds: float = 300.0  # alertmanager
    channel: str = ""  # slack
    username: str = ""  # slack
    secret: bytes = b""  # webhook (HMAC key)

    def __repr__(self) -> str:  # never print secrets or header values (tokens) in logs
        return f"Destination({self.name!r}, {self.type}, {self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL without what may be a credential: a Slack webhook's path is its token, userinfo a password."""
        u = urlsplit(self.url)
        host = u.netloc.rpartition("@")[2]
        if self.type == "alertmanager":
            return f"{u.scheme}://{host}{u.path}"
        return f"{u.scheme}://{host}/" + ("..." if u.path.strip("/") or u.query else "")


_NUM = {
    "rate_per_second": float, "burst": int, "group_max": int, "group_wait_seconds": float, "timeout_seconds": float,
    "retry_initial_seconds": float, "retry_max_seconds": float, "give_up_seconds": float, "max_pending": int,
    "min_firing_seconds": float,
}  # fmt: skip
_DEST_KEYS = {"type", "url", "group_by", "headers", "labels", "channel", "username", "secret_env", "secret_file", *_NUM}


@dataclass
class Matcher:
    rule: tuple[str, ...] = ()
    severity: tuple[str, ...] = ()
    min_severity: int = 0
    cluster: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def matches(self, alert: dict[str, Any], labels: dict[str, str]) -> bool:
        if self.rule and not _any(self.rule, alert.get("rule_id", "")):
            return False
        sev = alert.get("severity", "")
        if self.severity and not _any(self.severity, sev):
            return False
        if self.min_severity and (SEVERITIES.index(sev) if sev in SEVERITIES else -1) < self.min_severity:
            return False
        if self.cluster and not _any(self.cluster, alert.get("cluster", "")):
            return False
        if self.user and not _any(self.user, alert.get("username", "")):
            return False
        for name, pats in self.labels.items():
            if name == "tag":
                if not any(_any(pats, t) for t in alert.get("tags") or ()):
                    return False
            elif not _any(pats, labels.get(name, "")):
                return False
        return True


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


@dataclass
class Route:
    matcher: Matcher
    to: tuple[str, ...]
    stop: bool = False


@dataclass
class Routing:
    destinations: dict[str, Destination]
    routes: list[Route]
    default: tuple[str, ...]
    dashboard_url: str = ""
    source: str = ""

    def route(self, alert: dict[str, Any], labels: dict[str, str]) -> list[str]:
        """Destination names for an alert, in routing order, each once."""
        out: list[str] = []
        matched = False
        for r in self.routes:
            if r.matcher.matches(alert, labels):
                matched = True
                out.extend(d for d in r.to if d not in out)
                if r.stop:
                    break
        return out if matched else list(self.default)


def _strings(where: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return (str(v),)
    if isinstance(v, list) and v and all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in v):
        return tuple(str(x) for x in v)
    raise RoutingError(f"{where}: expected a string or a non-empty list of strings, got {v!r}")


def _expand(where: str, text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise RoutingError(f"{where}: environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return _ENV.sub(sub, text)


def _destination(src: str, name: str, d: Any, env: dict[str, str]) -> Destination:
    where = f"{src}: destinations.{name}"
    if not _NAME.match(name):
        raise RoutingError(f"{where}: a destination name is letters, digits, '.', '_' or '-'")
    if not isinstance(d, dict):
        raise RoutingError(f"{where}: expected a mapping")
    unknown = set(d) - _DEST_KEYS
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_DEST_KEYS)})")
    typ = d.get("type")
    if typ not in TYPES:
        raise RoutingError(f"{where}.type: one of {list(TYPES)}, got {typ!r}")
    url = _expand(f"{where}.url", str(d.get("url") or ""), env)
    if not re.match(r"^https?://[^/\s]+", url):
        raise RoutingError(f"{where}.url: an http:// or https:// URL is required")
    out = Destination(name=name, type=typ, url=url.rstrip("/") if typ == "alertmanager" else url)
    for key, conv in _NUM.items():
        if key in d:
            try:
                val = conv(d[key])
            except (TypeError, ValueError):
                raise RoutingError(f"{where}.{key}: expected a number, got {d[key]!r}") from None
            if val < 0 or (val == 0 and key != "min_firing_seconds"):
                raise RoutingError(f"{where}.{key}: must be positive, got {d[key]!r}")
            setattr(out, key, val)
    if "group_by" in d:
        gb = _strings(f"{where}.group_by", d["group_by"])
        bad = set(gb) - GROUP_FIELDS
        if bad:
            raise RoutingError(f"{where}.group_by: unknown field(s) {sorted(bad)} (known: {sorted(GROUP_FIELDS)})")
        out.group_by = gb
    for key in ("headers", "labels"):
        if key in d:
            m = d[key]
            if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
                raise RoutingError(f"{where}.{key}: expected a mapping of strings")
            setattr(out, key, {k: _expand(f"{where}.{key}.{k}", str(v), env) for k, v in m.items()})
    if out.labels and typ != "alertmanager":
        raise RoutingError(f"{where}.labels: only alertmanager destinations take labels")
    for k in out.labels:
        if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k):
            raise RoutingError(f"{where}.labels.{k}: not a valid Alertmanager label name")
    out.channel = str(d.get("channel") or "")
    out.username = str(d.get("username") or "")
    if "secret_env" in d:
        var = str(d["secret_env"])
        if not env.get(var):
            raise RoutingError(f"{where}.secret_env: environment variable {var} is not set or empty")
        out.secret = env[var].encode()
    if "secret_file" in d:
        try:
            out.secret = Path(str(d["secret_file"])).read_bytes().strip()
        except OSError as exc:
            raise RoutingError(f"{where}.secret_file: {exc}") from None
        if not out.secret:
            raise RoutingError(f"{where}.secret_file: the file is empty")
    if out.secret and typ != "webhook":
        raise RoutingError(f"{where}: only webhook destinations sign requests (secret_env/secret_file)")
    return out


def _matcher(where: str, m: Any) -> Matcher:
    if m is None:
        return Matcher()
    if not isinstance(m, dict):
        raise RoutingError(f"{where}: expected a mapping")
    unknown = set(m) - MATCH_KEYS
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(MATCH_KEYS)})")
    out = Matcher()
    for key in ("rule", "severity", "cluster", "user"):
        if key in m:
            setattr(out, key, _strings(f"{where}.{key}", m[key]))
    for sev in out.severity:
        if sev not in SEVERITIES and not any(c in sev for c in "*?["):
            raise RoutingError(f"{where}.severity: {sev!r} is not one of {list(SEVERITIES)}")
    if "min_severity" in m:
        if m["min_severity"] not in SEVERITIES:
            raise RoutingError(f"{where}.min_severity: one of {list(SEVERITIES)}, got {m['min_severity']!r}")
        out.min_severity = SEVERITIES.index(m["min_severity"])
    if "labels" in m:
        if not isinstance(m["labels"], dict) or not m["labels"]:
            raise RoutingError(f"{where}.labels: expected a mapping label -> pattern(s)")
        out.labels = {str(k): _strings(f"{where}.labels.{k}", v) for k, v in m["labels"].items()}
    return out


def parse(doc: Any, source: str = "<routing>", env: dict[str, str] | None = None) -> Routing:
    env = dict(os.environ) if env is None else env
    if not isinstance(doc, dict):
        raise RoutingError(f"{source}: expected a mapping with destinations and routes")
    unknown = set(doc) - {"destinations", "routes", "default", "dashboard_url"}
    if unknown:
        raise RoutingError(f"{source}: unknown key(s) {sorted(unknown)}")
    dests = doc.get("destinations") or {}
    if not isinstance(dests, dict) or not dests:
        raise RoutingError(f"{source}: destinations: at least one destination is required")
    destinations = {str(n): _destination(source, str(n), d, env) for n, d in dests.items()}

    def names(where: str, v: Any) -> tuple[str, ...]:
        if v == []:
            return ()
        out = _strings(where, v)
        for n in out:
            if n not in destinations:
                raise RoutingError(f"{where}: unknown destination {n!r} (defined: {sorted(destinations)})")
        return out

    routes_doc = doc.get("routes") or []
    if not isinstance(routes_doc, list):
        raise RoutingError(f"{source}: routes: expected a list")
    routes = []
    for i, r in enumerate(routes_doc):
        where = f"{source}: routes[{i}]"
        if not isinstance(r, dict) or "to" not in r:
            raise RoutingError(f"{where}: expected a mapping with 'to' (and 'match', 'stop')")
        unknown = set(r) - {"match", "to", "stop"}
        if unknown:
            raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)}")
        routes.append(Route(_matcher(f"{where}.match", r.get("match")), names(f"{where}.to", r["to"]), bool(r.get("stop"))))
    default = names(f"{source}: default", doc["default"]) if "default" in doc else tuple(destinations)
    dash = str(doc.get("dashboard_url") or "")
    if dash and not re.match(r"^https?://", dash):
        raise RoutingError(f"{source}: dashboard_url: an http:// or https:// URL is required")
    return Routing(destinations, routes, default, dash.rstrip("/"), source)


def load(path: Path, env: dict[str, str] | None = None) -> Routing:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RoutingError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, str(path), env)
