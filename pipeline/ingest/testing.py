"""Helpers for tests and benchmarks of the ingestion path: read a topic back, make TLS material."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka import headers as H


@dataclass
class Rec:
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int


def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 30.0,
               idle: float = 1.0) -> list[Rec]:  # fmt: skip
    """Every record of ``topic`` from the beginning: until ``expect`` records arrived (or ``timeout``), or,
    without ``expect``, until the end offsets known at call time are reached."""
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"kaudit-test-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed",
    })  # fmt: skip
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        ends = {}
        for p in parts:
            _, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        pos = dict.fromkeys(parts, 0)
        while time.monotonic() < deadline:
            if expect is None and all(pos[p] >= ends[p] for p in parts):
                break
            if expect is not None and len(out) >= expect:
                # a little longer: records beyond `expect` would be a bug the caller should see
                for m in c.consume(1000, idle):
                    if m.error() is None:
                        out.append(Rec(m.key(), m.value(), H.to_dict(m.headers()), m.partition(), m.offset()))
                break
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                pos[m.partition()] = m.offset() + 1
                out.append(Rec(m.key(), m.value(), H.to_dict(m.headers()), m.partition(), m.offset()))
        return out
    finally:
        c.close()


def make_pki(folder: Path, clients: dict[str, str]) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, and client certificates (name -> subject, e.g.
    ``"/CN=alpha"``), made with the openssl CLI. Returns name -> path (``ca``, ``server.crt``, ``<name>.crt``...)."""
    folder.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=kaudit-test-ca")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=bridge")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    out = {"ca": folder / "ca.crt", "server.crt": folder / "server.crt", "server.key": folder / "server.key"}
    for name, subj in clients.items():
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "client.ext")  # fmt: skip
        out[f"{name}.crt"], out[f"{name}.key"] = folder / f"{name}.crt", folder / f"{name}.key"
    return out
