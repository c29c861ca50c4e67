"""The source IP the rules match on is the peer the API server saw, not what the client claims: kube-apiserver
1.37.2 records X-Forwarded-For / X-Real-Ip values before the remote address in sourceIPs ("all but the last IP
can be arbitrarily set by the client"), so a rule on the first one was evaded (or framed) by one header. Real
API server, real bridge, worker and sink; rules from a user's rules file with caller lists."""

from __future__ import annotations

import time

import pytest

from tests.kube import live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]

POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
RULES = """\
lists:
  watched: {file: watched.txt}
  claimed: {file: claimed.txt}
rules:
  - id: peer-watched
    title: Request from a watched address
    severity: high
    match: {username: bob, sourceip: {in_list: watched}}
  - id: claimed-watched
    title: Request claiming a watched address
    severity: high
    match: {username: [bob, carol], sourceip: {in_list: claimed}}
"""


def test_rules_match_the_peer_not_the_forwarded_header(settings, tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    (tmp_path / "watched.txt").write_text("127.0.0.0/8\n::1/128\n")  # where the test's clients really are
    (tmp_path / "claimed.txt").write_text("203.0.113.66/32\n")  # what carol only claims to be
    with live_pipeline(settings, tmp_path, policy=tmp_path / "policy.yaml", worker_args=("--rules", str(rules))) as lp:
        kc = lp.cluster
        # bob hides behind a private address, carol frames 203.0.113.66
        kc.request("GET", "/api/v1/namespaces/default/pods", user="bob", headers={"X-Forwarded-For": "10.1.2.3"})
        kc.request("GET", "/api/v1/namespaces/default/pods", user="carol",
                   headers={"X-Forwarded-For": "203.0.113.66", "X-Real-Ip": "203.0.113.66"})  # fmt: skip
        logged = [e for e in kc.logged_events() if e["user"]["username"] in ("bob", "carol")]
        ips = {e["user"]["username"]: e["sourceIPs"] for e in logged}
        assert ips["bob"][0] == "10.1.2.3" and ips["bob"][-1] in ("127.0.0.1", "::1"), ips  # what the server wrote
        assert ips["carol"][0] == "203.0.113.66" and ips["carol"][-1] in ("127.0.0.1", "::1"), ips
        lp.wait_stored({(e["auditID"], e["stage"]) for e in logged})
        deadline = time.monotonic() + 60
        fired: list = []
        while time.monotonic() < deadline and not fired:
            fired = lp.sql("SELECT rule_id, username FROM alerts WHERE rule_id IN ('peer-watched', 'claimed-watched')")
            time.sleep(0.5)
        time.sleep(2.0)  # and nothing else arrives
        fired = lp.sql("SELECT rule_id, username FROM alerts WHERE rule_id IN ('peer-watched', 'claimed-watched')")
        assert sorted(map(tuple, fired)) == [("peer-watched", "bob")] * len(fired) and fired, fired
        # the query language still sees every recorded address (for hunting spoofed headers)
        q = lp.query('sourceip="10.1.2.3" groupby username', since="1h")
        assert [r[0] for r in q["rows"]] == ["bob"]
