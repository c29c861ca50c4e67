"""infra/docker-compose.yml's "cluster" profile, parsed (this workplace has no docker daemon and no compose plugin:
nobody ran it here). Checks that the compose file, infra/clickhouse/*.xml, pipeline/warehouse/migrations.py and
infra/kafka (kafka.sh's three-node cluster block, server.properties.in) agree: ports, macros, Keeper, names."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.warehouse.migrations import MIGRATIONS_PATH, MIGRATIONS_REPLICA_NAME, REPLICA_NAME, REPLICA_PATH

INFRA = Path(__file__).resolve().parents[1] / "infra"
COMPOSE = INFRA / "docker-compose.yml"
BUILTIN_MACROS = {"database", "table", "uuid"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if re.fullmatch(rf"{prefix}\d", n)}


def _mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """container path -> host file, for bind mounts of files of the repository"""
    out = {}
    for v in svc.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith("./"):
            out[dst] = (COMPOSE.parent / src).resolve()
    return out


def _host_ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(ip, int(h), int(c)) for ip, h, c in (p.split(":") for p in svc.get("ports", []))]


def test_profiles_and_ports(compose):
    services = compose["services"]
    cluster = {n for n, s in services.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {"kafka-1", "kafka-2", "kafka-3", "keeper", "ch1", "ch2"}
    assert not services["kafka"].get("profiles") and not services["clickhouse"].get("profiles")  # `up -d` unchanged
    ports = [p for s in services.values() for p in _host_ports(s)]
    assert all(ip == "127.0.0.1" for ip, _, _ in ports)  # loopback only: user default has no password
    assert len({h for _, h, _ in ports}) == len(ports)  # single-node and cluster servers can run side by side
    assert set(compose["volumes"]) >= {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                                        if not v.startswith("./")}  # fmt: skip


def test_clickhouse_nodes_match_the_migrations(compose):
    env = compose["x-kaudit-cluster-env"]
    nodes = _services(compose, "ch")
    keeper = compose["services"]["keeper"]
    assert len(nodes) == 2
    used_macros = set(re.findall(r"\{(\w+)\}", REPLICA_PATH + REPLICA_NAME + MIGRATIONS_PATH + MIGRATIONS_REPLICA_NAME)) - BUILTIN_MACROS
    assert used_macros == {"shard", "replica"}
    seen: set[tuple[str, str]] = set()
    remote = None
    for name, svc in nodes.items():
        mounts = _mounts(svc)
        assert all(p.is_file() for p in mounts.values()), mounts
        assert all(dst.startswith("/etc/clickhouse-server/config.d/") for dst in mounts)
        cfgs = [ET.parse(p).getroot() for p in mounts.values()]
        servers = [c.find("remote_servers") for c in cfgs if c.find("remote_servers") is not None]
        macros = [c.find("macros") for c in cfgs if c.find("macros") is not None]
        assert len(servers) == 1 and len(macros) == 1, name
        remote = servers[0]
        clusters = list(remote)
        assert [c.tag for c in clusters] == [env["KAUDIT_CLICKHOUSE_CLUSTER"]]
        assert (clusters[0].findtext("secret") or "").strip()
        shards = clusters[0].findall("shard")
        assert all(s.findtext("internal_replication") == "true" for s in shards)  # Replicated tables copy themselves
        # the node's {shard} is the shard remote_servers puts it in; {replica} its name there
        where = [(i, r) for i, s in enumerate(shards, 1) for r in s.findall("replica") if r.findtext("host") == svc["hostname"]]
        assert len(where) == 1, (name, svc["hostname"])
        i, replica = where[0]
        m = {e.tag: (e.text or "").strip() for e in macros[0]}
        assert used_macros <= set(m)
        assert int(m["shard"]) == i and m["replica"] == svc["hostname"]
        # remote_servers reaches the node on its native port inside the network (the one the compose maps)
        assert int(replica.findtext("port")) == 9000 and 9000 in [c for _, _, c in _host_ports(svc)]
        seen.add((m["shard"], m["replica"]))
        # Keeper: the node's zookeeper section names the keeper service and its client port
        zk = [c.find("zookeeper") for c in cfgs if c.find("zookeeper") is not None]
        assert len(zk) == 1
        nodes_zk = [(n.findtext("host"), int(n.findtext("port"))) for n in zk[0].findall("node")]
        kcfg = ET.parse(_mounts(keeper)["/etc/clickhouse-keeper/keeper_config.xml"]).getroot().find("keeper_server")
        assert nodes_zk == [(keeper["hostname"], int(kcfg.findtext("tcp_port")))]
        assert "keeper" in svc["depends_on"]
    # every node is some shard's replica, none twice; replica names unique cluster-wide ({shard}-{replica} anyway)
    hosts = [r.findtext("host") for r in remote.iter("replica")]
    assert sorted(hosts) == sorted(s["hostname"] for s in nodes.values())
    assert len(seen) == len(nodes) == len({r for _, r in seen})
    # the DSN kaudit is told to use is one of the nodes' HTTP port
    dsn_port = int(re.match(r"http://127\.0\.0\.1:(\d+)/", env["KAUDIT_CLICKHOUSE_DSN"])[1])
    assert dsn_port in [h for s in nodes.values() for _, h, c in _host_ports(s) if c == 8123]


def test_keeper_config(compose):
    keeper = compose["services"]["keeper"]
    root = ET.parse(_mounts(keeper)["/etc/clickhouse-keeper/keeper_config.xml"]).getroot()
    ks = root.find("keeper_server")
    servers = ks.find("raft_configuration").findall("server")
    assert [(s.findtext("id"), s.findtext("hostname")) for s in servers] == [(ks.findtext("server_id"), keeper["hostname"])]
    data = [v.split(":")[1] for v in keeper["volumes"] if not v.startswith("./")]
    assert all(ks.findtext(k).startswith(data[0] + "/") for k in ("log_storage_path", "snapshot_storage_path"))


def _prop(env_name: str) -> str:
    """The apache/kafka image's mapping: KAFKA_A_B -> a.b, __ -> _, ___ -> -"""
    s = env_name.removeprefix("KAFKA_").replace("___", "\0").replace("__", "\1").replace("_", ".")
    return s.replace("\0", "-").replace("\1", "_").lower()


def _kafka_sh_cluster_block(rf: int) -> dict[str, str]:
    """The properties kafka.sh writes for a node of a cluster of rf nodes (its heredoc), values resolved."""
    text = (INFRA / "kafka/kafka.sh").read_text()
    block = re.search(r"# --- cluster node \$NODE of \$rf.*?\n(.*?)\nEOF", text, re.S)[1]
    isr = 2 if rf > 1 else 1
    out = {}
    for line in block.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v.replace("$rf", str(rf)).replace("$isr", str(isr))
    return out


def _server_properties() -> dict[str, str]:
    out = {}
    for line in (INFRA / "kafka/server.properties.in").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_kafka_brokers_in_step_with_kafka_sh(compose):
    env = compose["x-kaudit-cluster-env"]
    brokers = _services(compose, "kafka-")
    assert len(brokers) == 3
    props = {n: {_prop(k): str(v) for k, v in s["environment"].items() if k.startswith("KAFKA_")}
             for n, s in brokers.items()}  # fmt: skip
    ids = sorted(int(p["node.id"]) for p in props.values())
    assert ids == [1, 2, 3]
    cluster_ids = {s["environment"]["CLUSTER_ID"] for s in brokers.values()}
    assert len(cluster_ids) == 1 and cluster_ids != {compose["services"]["kafka"]["environment"]["CLUSTER_ID"]}
    bootstrap = []
    for name, s in brokers.items():
        p = props[name]
        listeners = dict(re.match(r"(\w+)://(.*)", x).groups() for x in p["listeners"].split(","))
        advertised = dict(re.match(r"(\w+)://(.*)", x).groups() for x in p["advertised.listeners"].split(","))
        voters = dict(v.split("@") for v in p["controller.quorum.voters"].split(","))
        assert voters == {str(int(b["environment"]["KAFKA_NODE_ID"])): f"{b['hostname']}:{listeners['CONTROLLER'].lstrip(':')}"
                          for b in brokers.values()}  # fmt: skip
        assert advertised["PLAINTEXT"] == f"{s['hostname']}:{listeners['PLAINTEXT'].lstrip(':')}"
        (ip, host_port, container_port), = _host_ports(s)
        assert container_port == int(listeners["HOST"].lstrip(":")) and advertised["HOST"] == f"{ip}:{host_port}"
        bootstrap.append(advertised["HOST"])
        # kafka.sh's cluster block for three nodes, value for value
        for k, v in _kafka_sh_cluster_block(3).items():
            if k in ("node.id", "controller.quorum.voters"):
                continue
            assert p.get(k) == v, (name, k)
        # and the single-node template's other settings
        sp = _server_properties()
        cluster_keys = set(_kafka_sh_cluster_block(3))
        for k in ("log.retention.hours", "log.cleaner.dedupe.buffer.size", "auto.create.topics.enable",
                  "num.partitions", "offsets.topic.num.partitions", "group.initial.rebalance.delay.ms",
                  "message.max.bytes", "replica.fetch.max.bytes", "controller.listener.names", "process.roles"):  # fmt: skip
            assert k not in cluster_keys and p[k] == sp[k], (name, k)
    assert env["KAUDIT_KAFKA_BOOTSTRAP"].split(",") == sorted(bootstrap)
    # kafka.sh cluster topics: replication = nodes, min ISR 2
    assert (env["KAUDIT_KAFKA_REPLICATION_FACTOR"], env["KAUDIT_KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
