"""The sink inserts records of every known writer schema: an EventBatch written by an older worker (before the
Kubernetes 1.35 columns, schemas/event_batch.v1.avsc) still lands, the new columns at their defaults; and each
event's own cluster is stored (a GKE export names its clusters per entry)."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.models.avro import Codec, codec
from pipeline.models.normalize import normalize_event
from pipeline.sinks.tables import EventsWriter, Item
from tests.conftest import REPO


def _event(audit_id: str, cluster: str, **over) -> dict:
    ev = {"kind": "Event", "auditID": audit_id, "stage": "ResponseComplete", "verb": "get",
          "requestReceivedTimestamp": "2026-11-30T10:00:00Z", **over}  # fmt: skip
    return normalize_event(ev, cluster)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_old_writer_schema_and_per_event_clusters(warehouse, tmp_path: Path, version: str):
    client, _s, _db = warehouse
    old = fastavro.parse_schema(json.loads((REPO / "schemas" / f"event_batch.{version}.avsc").read_text()))
    old_fp = fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO")
    assert old_fp != codec("event_batch").fp
    fields = {f["name"] for f in old["fields"][3]["type"]["items"]["fields"]}
    legacy = {k: v for k, v in _event("old-1", "c").items() if k in fields}
    v_old = Codec(old["name"], old, old_fp).encode({"source_id": "0:1", "cluster": "c", "received_at": 0, "events": [legacy], "dropped_keys": []})
    new = [_event("new-1", "prod-a", authenticationMetadata={"impersonationConstraint": "impersonate:user-info"}),
           _event("new-2", "prod-b")]  # fmt: skip
    cur = codec("event_batch")
    v_new = cur.encode({"source_id": "0:2", "cluster": "gke-export", "received_at": 0, "events": new, "dropped_keys": []})
    w = EventsWriter(client, True, tmp_path)
    assert w.write([Item("events", 0, 1, v_old, "0:1", 1, old_fp), Item("events", 0, 2, v_new, "0:2", 2, cur.fp)])[0] == 3
    rows = client.query("SELECT auditid, cluster, impersonation_constraint FROM audit_events ORDER BY auditid").result_rows
    assert rows == [("new-1", "prod-a", "impersonate:user-info"), ("new-2", "prod-b", ""), ("old-1", "c", "")]
