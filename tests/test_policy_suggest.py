"""`kaudit policy suggest` on hand-made traffic in chDB: what it lowers, what it protects (derived from the alert
rules, a user's too), its estimate against the policy applied to the same events, the YAML and the diff."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.agents.rules import load_rules
from pipeline.policy import RECOMMENDED, PolicyError, suggest, summary
from pipeline.policy.protect import Scope, eval3, judge
from pipeline.volume import Window
from tests.test_volume_rollup import HOUR, ev, insert, runner

W = Window(HOUR, HOUR + 3600)


def traffic() -> list[dict[str, Any]]:
    raws: list[dict[str, Any]] = []

    def add(*a: Any, **k: Any) -> None:
        raws.append(ev(len(raws) + 1, *a, **k))

    body = {"kind": "PodList", "items": [{"metadata": {"name": "x" * 300}}]}
    for _ in range(30):
        for sa in ("a", "b"):
            add(f"system:serviceaccount:ctrl:{sa}", "list", "pods", obj=body)
            add(f"system:serviceaccount:ctrl:{sa}", "watch", "pods", stage="ResponseStarted")
            add(f"system:serviceaccount:ctrl:{sa}", "watch", "pods")
        add("system:serviceaccount:kube-system:ctl", "list", "configmaps")  # system-principal-public-ip reads sourceip
        add("system:serviceaccount:ctrl:denied", "list", "pods", code=403)  # 401/403: never None
        add("system:serviceaccount:ctrl:reader", "list", "secrets")  # secret-read: metadata kept
        add("system:serviceaccount:ctrl:leader", "update", "leases", level="Request",
            objectRef={"resource": "leases", "namespace": "ns", "apiGroup": "coordination.k8s.io", "apiVersion": "v1"},
            requestObject={"spec": {"holderIdentity": "y" * 200}})  # fmt: skip
    for _ in range(5):
        add("alice", "delete", "configmaps")
        add("system:anonymous", "get", "", uri="/livez")
        add("alice", "create", "pods", code=101, level="Request",
            objectRef={"resource": "pods", "subresource": "exec", "namespace": "ns", "name": "p", "apiVersion": "v1"})
    return raws


def test_protection_is_derived_from_the_rules():
    rules = [r for r in load_rules() if r.enabled]
    reads = Scope("system:serviceaccount:ctrl:a", frozenset({"list"}), "", "pods", stages={"ResponseComplete"},
                  levels={"Metadata"}, codes={200}, groups={("system:authenticated",)})  # fmt: skip
    v = judge(reads, rules)
    assert v.allowed["None"] and v.allowed["omit:ResponseStarted"]
    # a rule switched on changes the verdict: first sightings of a service account's user agents need its reads
    with_ua = [dataclasses.replace(r, enabled=True) if r.id == "sa-new-user-agent" else r for r in load_rules()]
    v = judge(reads, [r for r in with_ua if r.enabled])
    assert not v.allowed["None"] and v.allowed["Metadata"]
    assert any("sa-new-user-agent" in reason for reason in v.reasons["None"])
    kube_system = Scope("system:serviceaccount:kube-system:x", frozenset({"list"}), "", "pods", codes={200})
    v = judge(kube_system, rules)
    assert not v.allowed["None"]
    assert any("system-principal-public-ip may match (reads sourceip" in r for r in v.reasons["None"])
    denied = Scope("u", frozenset({"list"}), "", "pods", codes={200, 403})
    v = judge(denied, rules)
    assert not v.allowed["None"] and any("forbidden-burst" in r for r in v.reasons["None"])
    exec_ = Scope("u", frozenset({"create"}), "", "pods", "exec", codes={101})
    assert not any(judge(exec_, rules).allowed.values())
    secrets = Scope("u", frozenset({"get"}), "", "secrets", codes={200})
    v = judge(secrets, rules)
    assert not v.allowed["None"] and any("rule secret-read matches" in r for r in v.reasons["None"])
    # three-valued logic: unknown fields make a rule possible, not certain
    assert eval3({"sourceip": "1.2.3.4"}, {"username": ["u"]}) is None
    assert eval3({"any": [{"username": "x"}, {"sourceip": "1"}]}, {"username": ["u"]}) is None
    assert eval3({"not": {"username": "u"}}, {"username": ["u"]}) is False
    assert eval3({"verb": {"in": ["get", "list"]}}, {"verb": ["get", "watch"]}) is None


def test_a_users_own_rule_protects_its_inputs(tmp_path):
    own = tmp_path / "rules.yaml"
    own.write_text(
        "rules:\n  - id: ctrl-a-watch\n    title: ctrl a watches pods\n    match: {username: 'system:serviceaccount:ctrl:a', verb: watch}\n"
        "    stages: any\n"
    )
    scope = Scope("system:serviceaccount:ctrl:a", frozenset({"watch"}), "", "pods", stages={"ResponseStarted", "ResponseComplete"},
                  levels={"Metadata"}, codes={200}, groups={("system:serviceaccounts", "system:authenticated")})  # fmt: skip
    v = judge(scope, load_rules(own))
    assert not v.allowed["None"] and not v.allowed["omit:ResponseStarted"]
    assert any("rule ctrl-a-watch matches" in r for r in v.reasons["None"])
    assert judge(scope, load_rules()).allowed["None"]


# --- a small audit policy evaluator, to apply the suggestion to the same events ---------------------------------
def _rule_matches(rule: dict[str, Any], raw: dict[str, Any]) -> bool:
    user = raw.get("user") or {}
    if rule.get("users") and user.get("username") not in rule["users"]:
        return False
    if rule.get("userGroups") and not set(rule["userGroups"]) & set(user.get("groups") or []):
        return False
    if rule.get("verbs") and raw["verb"] not in rule["verbs"]:
        return False
    ref = raw.get("objectRef")
    if rule.get("nonResourceURLs"):
        path = raw["requestURI"].split("?")[0]
        return ref is None and any(path == u or (u.endswith("*") and path.startswith(u[:-1])) for u in rule["nonResourceURLs"])
    if rule.get("resources"):
        if ref is None:
            return False
        res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        ok = False
        for gr in rule["resources"]:
            if gr.get("group", "") != ref.get("apiGroup", "") and "group" in gr:
                continue
            names = gr.get("resources")
            if not names or res in names or (f"{ref['resource']}/*" in names and ref.get("subresource")):
                ok = True
        if not ok:
            return False
    if rule.get("namespaces") and (ref or {}).get("namespace") not in rule["namespaces"]:
        return False
    return True


def apply_policy(policy: dict[str, Any], raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an API server logs of these events under ``policy`` (first matching rule; None drops; Metadata strips
    objects; omitStages drops those stages)."""
    out = []
    for raw in raws:
        rule = next((r for r in policy["rules"] if _rule_matches(r, raw)), {"level": "None"})
        omit = set(policy.get("omitStages") or []) | set(rule.get("omitStages") or [])
        if rule["level"] == "None" or raw["stage"] in omit:
            continue
        kept = dict(raw)
        if rule["level"] == "Metadata":
            kept.pop("requestObject", None)
            kept.pop("responseObject", None)
        kept["level"] = raw["level"] if rule["level"] == "Metadata" and raw["level"] == "Metadata" else rule["level"]
        out.append(kept)
    return out


EVERYTHING_AS_MEASURED = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n"


def test_suggestion_estimate_equals_the_policy_applied_to_the_same_events(warehouse, tmp_path):
    client, _, _ = warehouse
    raws = traffic()
    insert(client, raws)
    current = tmp_path / "current.yaml"
    current.write_text(EVERYTHING_AS_MEASURED)
    sug = suggest(runner(client), W, load_rules(), target=1.0, current=current)
    policy = yaml.safe_load(sug.text)
    assert policy["rules"][-1] == {"level": "RequestResponse"}  # the current policy follows the new rules
    # levels as measured: the "current" policy logs what it was given
    after = apply_policy(policy, raws)
    est_events, est_bytes = sug.share
    measured_events = 1 - len(after) / len(raws)
    measured_bytes = 1 - sum(len(orjson.dumps(r)) for r in after) / sum(len(orjson.dumps(r)) for r in raws)
    assert est_events == pytest.approx(measured_events, abs=0.005)
    assert est_bytes == pytest.approx(measured_bytes, abs=0.03)  # Metadata: the object keys' exact text aside
    # what went, what stayed
    users_none = {u for r in policy["rules"] if r["level"] == "None" for u in r.get("users", [])}
    assert users_none == {"system:serviceaccount:ctrl:a", "system:serviceaccount:ctrl:b"}
    kept_users = {r["user"]["username"] for r in after}
    assert {"system:serviceaccount:kube-system:ctl", "system:serviceaccount:ctrl:denied", "alice",
            "system:serviceaccount:ctrl:reader", "system:anonymous", "system:serviceaccount:ctrl:leader"} <= kept_users  # fmt: skip
    leases = [r for r in after if (r.get("objectRef") or {}).get("resource") == "leases"]
    assert len(leases) == 30 and all("requestObject" not in r for r in leases)  # writes kept, lowered to Metadata
    execs = [r for r in after if (r.get("objectRef") or {}).get("subresource") == "exec"]
    assert len(execs) == 5 and all(r["level"] == "RequestResponse" for r in execs)  # interactive access untouched
    # every alert-relevant request is still logged
    assert sum(r["verb"] == "delete" for r in after) == 5 and sum(r["responseStatus"]["code"] == 403 for r in after) == 30
    # the header says what was protected and why
    assert "rule system-principal-public-ip may match" in sug.text and "floor: writes are never dropped" in sug.text
    assert "401/403" in sug.text and "A future 401/403 in such a scope would be dropped" in sug.text
    assert re.search(r"# kaudit policy suggest: -\d+% of events, -\d+% of bytes", sug.text)
    s = summary(sug)
    assert s.startswith(f"kaudit policy suggest: {len(sug.rules)} rule(s), estimated -")


def test_target_stops_early_and_the_diff_is_readable(warehouse, tmp_path):
    client, _, _ = warehouse
    insert(client, traffic())
    current = tmp_path / "current.yaml"
    current.write_text(RECOMMENDED.read_text())
    full = suggest(runner(client), W, load_rules(), target=1.0, current=current)
    part = suggest(runner(client), W, load_rules(), target=0.2, current=current)
    assert 0.2 <= part.share[0] < full.share[0] and len(part.rules) < len(full.rules)
    assert part.diff.startswith(f"--- {current}\n+++ suggested\n")
    assert "+  - level: None" in part.diff and "\n-" not in part.diff.split("+++ suggested\n", 1)[1]  # additions only
    assert yaml.safe_load(part.text)["omitStages"] == ["RequestReceived"]  # the current policy's own settings kept
    for bad in ("kind: Nope\n", "::: not yaml", "apiVersion: audit.k8s.io/v1\nkind: Policy\n"):
        current.write_text(bad)
        with pytest.raises(PolicyError, match="--current"):
            suggest(runner(client), W, load_rules(), current=current)


def test_cli(warehouse, tmp_path, monkeypatch, capsys):
    client, s, db = warehouse
    insert(client, traffic())
    import contextlib

    from pipeline import cli
    from pipeline.volume import source
    from pipeline.warehouse.reader import Warehouse

    @contextlib.contextmanager
    def in_db(settings):
        wh = Warehouse(settings.model_copy(update={"clickhouse_dsn": s.clickhouse_dsn}), max_workers=1, database=db)
        try:
            yield lambda sql, params: wh.query(sql, params)[1]
        finally:
            wh.close()

    monkeypatch.setattr(source, "warehouse_runner", in_db)
    monkeypatch.setattr("time.time", lambda: HOUR + 1800)
    out = tmp_path / "p.yaml"
    assert cli.main(["policy", "suggest", "--since", "1h", "--target", "100%", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["kind"] == "Policy"
    assert "estimated -" in capsys.readouterr().err
    assert cli.main(["policy", "suggest", "--target", "0%"]) == 2
    assert "--target" in capsys.readouterr().err
    assert cli.main(["policy", "suggest", "--since", "1h", "--current", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert Path(out).stat().st_size > 0
