"""Rules with memory (first-seen terms, sequences) and caller lists, without Kafka: exactness of the memory under
rebuild + replay (the worker's contract), in-process replays, bounds, list lookups and rule-file errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson
import pytest

from pipeline.agents import memory as M
from pipeline.agents.callers import ListError, parse_list
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleError, RuleSet, load_rule_file, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings

# caller lists with their example networks; sa-new-user-agent (off by default) switched on
RULES = RuleSet([dataclasses.replace(r, enabled=True) if r.id == "sa-new-user-agent" else r
                 for r in load_rules(examples=True)])  # fmt: skip
MEMORY_RULES = {r.id for r in RULES.rules if r.kind in ("first_seen", "sequence")}
DAY = 86_400_000_000


def ts_text(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}Z"


def event(rng: random.Random, us: int, user: str, kind: str) -> dict:
    ev: dict = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": str(uuid.UUID(int=rng.getrandbits(128))), "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/secrets/s", "verb": "get",
        "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.1"],
        "userAgent": "kubectl/v1.30", "objectRef": {"resource": "secrets", "namespace": "default", "name": "s"},
        "responseStatus": {"code": 200}, "requestReceivedTimestamp": ts_text(us), "stageTimestamp": ts_text(us),
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }  # fmt: skip
    if kind == "exec":
        ev.update(verb="create", objectRef={"resource": "pods", "subresource": "exec", "namespace": "default", "name": "p"})
    elif kind == "bind":
        subject = rng.choice(["u1", "u2", "u3", "u7"])
        ev.update(
            verb="create", user={"username": "admin", "groups": []}, responseStatus={"code": 201},
            objectRef={"resource": "rolebindings", "namespace": "default", "name": f"rb-{subject}", "apiGroup": "rbac.authorization.k8s.io"},
            requestObject={"subjects": [{"kind": "User", "name": subject}], "roleRef": {"kind": "ClusterRole", "name": "admin"}},
        )  # fmt: skip
    elif kind == "token":
        ev.update(verb="create", objectRef={"resource": "serviceaccounts", "subresource": "token", "namespace": "web", "name": "app"},
                  responseStatus={"code": 201})  # fmt: skip
    elif kind == "sa-out":
        ev.update(user={"username": "system:serviceaccount:web:app", "groups": []}, sourceIPs=[rng.choice(["198.51.100.7", "198.51.100.8"])],
                  userAgent=rng.choice(["app/1", "curl/8", f"tool/{rng.randint(0, 40)}"]))  # fmt: skip
    return ev


def history_stream(seed: int = 11, n_records: int = 40) -> list[bytes]:
    """Raw records over 40 days of event time: the first week is learning, then new users, execs, bindings
    followed by reads, tokens followed by outside use; some events repeat across records (resends)."""
    rng = random.Random(seed)
    start = (time.time_ns() // 1000) - 40 * DAY
    records, last = [], []
    for i in range(n_records):
        base = start + i * DAY
        events = []
        for _ in range(rng.randint(5, 25)):
            kind = rng.choice(["read", "read", "exec", "bind", "token", "sa-out"])
            t = base + rng.randint(0, DAY // 2)
            events.append(event(rng, t, f"u{rng.randint(0, 9 + i // 4)}", kind))
            if kind in ("bind", "token") and rng.random() < 0.5:  # the second step of a sequence, minutes later
                follow = event(rng, t + 600_000_000, "", "read" if kind == "bind" else "sa-out")
                if kind == "bind":
                    follow["user"]["username"] = events[-1]["requestObject"]["subjects"][0]["name"]
                events.append(follow)
        if i % 5 == 0 and i > 0:
            events.append(event(rng, base - 45 * DAY, "old-straggler", "read"))  # far out of order
        if last and i % 3 == 0:
            events += last[:3]  # an apiserver resend
        last = events
        records.append(orjson.dumps({"kind": "EventList", "items": events}))
    return records


def run(proc: Processor, st: PartitionState, records: list[bytes], first_offset: int = 0) -> list:
    return [proc.process(st, first_offset + i, b"mem", rec, []) for i, rec in enumerate(records)]


def alerts_of(outs: list) -> list[tuple[str, str, str]]:
    return [(a.alert_id, a.record["rule_id"], a.record["group_key"]) for o in outs for a in o.alerts if a.record["rule_id"] in MEMORY_RULES]


def rebuilt(outs: list, resume: int, st_partition: int = 0) -> PartitionState:
    """What the worker's rebuild does with the memory topic: per key, the value of the highest source < resume."""
    st = PartitionState(st_partition, 900)
    for o in outs:
        for key, value in o.memory:
            src, owner, v = M.decode_update(value)
            if src < resume:
                st.memory.load(key, src, v, owner)
    return st


@pytest.mark.parametrize("native_on", [False, True])
def test_rebuild_then_replay_gives_identical_alerts_and_memory(native_on: bool):
    proc = Processor(Settings(native=native_on), RULES)
    records = history_stream()
    first = run(proc, PartitionState(0, 900), records)
    got = alerts_of(first)
    kinds = {rule for _, rule, _ in got}
    # every kind of memory rule fired somewhere in the stream, and learning held the first week back
    assert {"first-secret-read", "first-exec", "binding-then-secret-read", "sa-token-then-outside-use", "sa-new-user-agent"} <= kinds
    assert not any(a for o in first[:6] for a in o.alerts if a.record["rule_id"].startswith("first-"))
    assert len(got) == len({a for a, _, _ in got})  # one alert per first sighting / sequence
    for crash_at in (7, 19, 33):
        # a crash: outputs of records >= crash_at may exist but the raw offsets were not committed
        st = rebuilt(first, crash_at)
        # the dedup state is rebuilt from the events topic: replayed records see the same duplicates
        for i, o in enumerate(first[:crash_at]):
            if o.events_value is not None:
                from pipeline.models.avro import codec

                for ev in codec("event_batch").decode(o.events_value)["events"]:
                    st.seen.add(("mem", ev["auditid"], ev["stage"]), i, time.time())
        again = run(proc, st, records[crash_at:], crash_at)
        assert alerts_of(again) == alerts_of(first[crash_at:]), crash_at
        assert [o.memory for o in again] == [o.memory for o in first[crash_at:]], crash_at


def test_replay_on_the_same_state_decides_the_same():
    proc = Processor(Settings(), RULES)
    records = history_stream(5, 20)
    st = PartitionState(0, 900)
    first = run(proc, st, records)
    assert alerts_of(first)
    # the last record delivered again to the same process (no rebuild); deeper replays go through the rebuild,
    # which the worker does on every (re)assignment
    again = proc.process(st, 19, b"mem", records[19], [])
    assert alerts_of([again]) == alerts_of(first[19:])
    assert again.memory == first[19].memory


def test_memory_is_bounded_and_forgets_what_cannot_matter():
    mem = M.Memory(max_keys=1000)
    ups = M.Updates()
    keys = [M.mkey("r", "c", "term", f"user-{i}") for i in range(5000)]
    owner = ("r", "c", "term")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, k in enumerate(keys):
        mem.put(k, i, (i * 1000,), owner)
    per_key = (tracemalloc.get_traced_memory()[0] - before) / 5000
    tracemalloc.stop()
    print(f"memory per first-seen key: {per_key:.0f} bytes, the 16-byte key object aside (49 more)")
    assert per_key < 400
    for i, k in enumerate(keys):
        M.note(mem, ups, k, i, (i * 1000,), owner)
    M.note(mem, ups, M.mkey("r", "c", "clock", ""), 5000, (0, 4_000_000), ("r", "c", "clock"))
    # horizon 1 s: terms seen before 3_000_000 us can no longer be new-or-not differently
    mem.forget({"r": 1_000_000})
    assert len(mem) <= 1000 and mem.dropped > 0
    assert mem.get(M.mkey("r", "c", "term", "user-4999"), 10**9) == (4_999_000,)


def test_caller_list_lookup_matches_ipaddress():
    text = "# bad\n192.0.2.0/24\n198.51.100.7\n10.0.0.0/8  # corp\n10.1.0.0/16\n2001:db8::/32\n\n"
    lst = parse_list("t", text, "t.txt")
    nets = [ipaddress.ip_network(x) for x in ("192.0.2.0/24", "198.51.100.7/32", "10.0.0.0/8", "2001:db8::/32")]
    rng = random.Random(1)
    probes = ["192.0.2.255", "192.0.3.0", "198.51.100.7", "198.51.100.8", "10.255.255.255", "11.0.0.0",
              "2001:db8::1", "2001:db9::", "::ffff:192.0.2.4", "not-an-ip", "", "10.0.0.0"]  # fmt: skip
    probes += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
    for p in probes:
        try:
            ip = ipaddress.ip_address(p)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            want = any(ip.version == n.version and ip in n for n in nets)
        except ValueError:
            want = False
        assert lst.contains(p) is want, p
    with pytest.raises(ListError, match=r"t.txt:2"):
        parse_list("t", "10.0.0.0/8\n10.0.0.300\n", "t.txt")


def test_rules_file_errors_name_the_field(tmp_path: Path):
    f = tmp_path / "r.yaml"
    cases = {
        "rules: [{id: a, title: T, match: {verb: get}, first_seen: {terms: []}}]": "first_seen.terms",
        "rules: [{id: a, title: T, match: {verb: get}, first_seen: {terms: [nosuch]}}]": "nosuch",
        "rules: [{id: a, title: T, match: {verb: get}, sequence: {key: username}}]": "sequence",
        "rules: [{id: a, title: T, match: {sourceip: {in_list: nope}}}]": "unknown list 'nope'",
        "rules: [{id: a, title: T, match: {verb: get}, threshold: {count: 2}, first_seen: {terms: [username]}}]": "at most one",
        "lists: {x: missing.txt}\nrules: []": "cannot read",
        "rules: [{id: a, title: T, match: {verb: get}, examples: {fire: [{history: {}, event: {}}]}}]": "history example",
    }
    for text, needle in cases.items():
        f.write_text(text)
        with pytest.raises(RuleError, match=needle):
            load_rule_file(f)


def test_user_list_replaces_default_and_empty_list_makes_rule_inactive(tmp_path: Path):
    (tmp_path / "tor.txt").write_text("# nothing yet\n")
    (tmp_path / "bad.txt").write_text("8.8.8.0/24\n")
    f = tmp_path / "mine.yaml"
    f.write_text("lists: {tor-exits: tor.txt, malicious-ips: bad.txt}\nrules: []\n")
    rules = {r.id: r for r in load_rules(f)}
    assert "empty" in rules["tor-ip-caller"].inactive
    assert "tor-ip-caller" not in {r.id for r in RuleSet(list(rules.values())).rules}
    proc = Processor(Settings(), RuleSet(list(rules.values())))
    body = orjson.dumps({"kind": "EventList", "items": [event(random.Random(2), time.time_ns() // 1000, "x", "read") | {"sourceIPs": ["8.8.8.8"]}]})
    out = proc.process(PartitionState(0, 900), 0, b"c", body, [])
    assert "malicious-ip-caller" in {a.record["rule_id"] for a in out.alerts}


def test_coverage_header_names_every_finding_type_of_issue_17_with_existing_rules():
    import re

    from pipeline.agents.rules import DEFAULT_RULES

    text = DEFAULT_RULES.read_text()
    header = text[: text.index("\nrules:")]
    named = [
        "AnomalousBehavior.SecretsAccessed", "AnomalousBehavior.PermissionChecked", "AnomalousBehavior.ExecInPod",
        "AnomalousBehavior.WorkloadDeployed", "AnomalousBehavior.RoleCreated", "AnomalousBehavior.RoleBindingCreated",
        "MaliciousIPCaller", "TorIPCaller", "SuccessfulAnonymousAccess", "AttackSequence:EKS/CompromisedCluster",
        "workloads in sensitive namespaces", "static pods", "kube-dns changes", "webhook configurations",
        "effectively anonymous users granted access",
    ]  # fmt: skip
    ids = {r.id for r in load_rules()}
    for name in named:
        assert name in header, name
        line = header[header.index(name):].split("\n#   ")[0]
        mentioned = set(re.findall(r"[a-z][a-z0-9]+(?:-[a-z0-9]+)+", line)) & ids
        assert mentioned, f"{name}: no rule id on its line"
