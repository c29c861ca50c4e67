"""All kaudit configuration in one place.

Every setting is an environment variable ``KAUDIT_<NAME>`` with the default shown here;
CLI flags override them (see ``pipeline.cli``). ``kaudit config`` prints the effective values.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAUDIT_", extra="ignore")

    # --- state -------------------------------------------------------------------------------------
    var: Path = Field(
        REPO_ROOT / "var", description="Folder for local state (Kafka data, chDB, checkpoints)."
    )

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("", description="Prefix for every topic name (several installs on one Kafka).")
    raw_partitions: int = Field(
        4, description="Partitions of the raw, events and memory topics (raw records are keyed by cluster; the stats and "
        "alerts topics have one)."
    )
    kafka_compression: str = Field(
        "lz4",
        description="Producer compression (none, lz4, zstd, snappy, gzip): the broker pays to check it.",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, description="Largest Kafka record (a whole webhook batch)."
    )

    # --- ClickHouse --------------------------------------------------------------------------------
    clickhouse_dsn: str = Field(
        "", description="ClickHouse DSN: empty = embedded chDB under <var>/chdb; or http://host:8123/db."
    )
    retention_days: int = Field(0, description="Drop events older than this many days (0 = keep forever).")
    clickhouse_cluster: str = Field(
        "", description="ClickHouse server only: the cluster (remote_servers) to lay the tables out on: "
        "ReplicatedMergeTree <table>_local per shard + Distributed <table>, every DDL ON CLUSTER "
        "(pipeline/warehouse/migrations.py); empty = one node, plain MergeTree tables."
    )

    # --- event model -------------------------------------------------------------------------------
    max_object_bytes: int = Field(
        256 * 1024, description="requestObject/responseObject above this size are cut and flagged."
    )
    redact_secrets: bool = Field(
        True,
        description="Replace credentials (Secret values, TokenRequest/TokenReview tokens, their last-applied copies, "
        "patches to Secrets; pipeline/redaction/model.py) with a hash before anything leaves the worker.",
    )
    native: bool = Field(
        True,
        description="Use the compiled hot path (native/, built by make install) in the worker when it is installed; "
        "0 forces the pure-Python path (same output, slower).",
    )

    # --- bridge ------------------------------------------------------------------------------------
    bridge_host: str = Field("127.0.0.1", description="Bridge listen address.")
    bridge_port: int = Field(8765, description="Bridge listen port.")
    bridge_tokens_file: Path | None = Field(None, description="YAML/JSON file: cluster -> bearer token(s).")
    bridge_max_body_bytes: int = Field(
        48 * 1024 * 1024,
        description="Largest accepted (decompressed) webhook body: 400 events x 100 KiB fit.",
    )
    bridge_ack_timeout: float = Field(
        10.0, description="Seconds to wait for Kafka acks before answering 503."
    )
    metrics_max_clusters: int = Field(
        200, ge=0,
        description="Cardinality budget of per-cluster metric labels: the first N clusters seen since start get "
        "their own cluster=\"<name>\" series, later ones are counted under cluster=\"_other\" (totals stay exact).",
    )

    # --- worker ------------------------------------------------------------------------------------
    window_seconds: int = Field(60, description="Tumbling window size for verb/status aggregates.")
    count_stages: str = Field(
        "", description="Comma-separated stages counted in aggregates (empty = all stages)."
    )
    dedup_horizon_seconds: int = Field(
        900, description="How long (wall clock) a seen (cluster, auditID, stage) is remembered."
    )
    worker_group_seconds: float = Field(
        0.05,
        description="Longest wait to gather raw records into one group: a group's outputs go to Kafka together "
        "and their acks are awaited once (longer: fewer produce requests and less CPU, later alerts).",
    )
    rules_file: Path | None = Field(None, description="Extra alert rules (YAML), added to the default set.")
    filter_file: Path | None = Field(None, description="Drop/sample rules (YAML) applied before storage.")
    # --- rules with memory (detect: pipeline/agents/memory.py) ---
    memory_max_keys: int = Field(
        5_000_000,
        description="Most first-seen/sequence memory entries per raw partition (about 320 bytes each); past it "
        "the oldest are dropped and may alert again.",
    )
    memory_retention_days: int = Field(
        40,
        description="Retention of the compacted k8s-audit-memory topic: longer than the longest first-seen "
        "lookback plus its refresh (a term unseen for longer is forgotten anyway).",
    )

    # --- sink ----------------------------------------------------------------------------------------
    sink_batch_rows: int = Field(
        200_000,
        description="Rows per ClickHouse insert when Kafka has a backlog (fewer, larger parts to merge).",
    )
    sink_batch_seconds: float = Field(
        2.0,
        description="Longest wait before a partial batch is written (freshness vs. cost: an insert of 50k rows "
        "costs chDB about half as much CPU per row as one of 20k, merges included).",
    )
    sink_read_threads: int = Field(
        2,
        description="Embedded chDB: threads decoding one insert's Avro (the batch goes in as that many files).",
    )

    # --- query API / dashboard ----------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Query API / dashboard listen address.")
    api_port: int = Field(8080, description="Query API / dashboard listen port.")
    api_url: str = Field(
        "", description="Query API of the warehouse owner (embedded mode), e.g. http://127.0.0.1:8080."
    )
    api_token: str = Field(
        "",
        description="Server: an admin bearer token of the query API/dashboard (every cluster, raw SQL). Clients "
        "(kaudit query/sql/rbac through the API): the token they send, e.g. a reader token.",
    )

    # --- access: readers, TLS and self-audit of the query API / dashboard (pipeline/access/) ---------
    api_readers_file: Path | None = Field(
        None,
        description="YAML/JSON file: reader -> token(s) (plain or sha256:<hex>), clusters it may see, role "
        "(reader|admin; only admin may run raw SQL). Re-read on change and SIGHUP. KAUDIT_API_TOKEN stays "
        "one admin token.",
    )
    api_audit_file: Path | None = Field(
        None,
        description="Append one JSON line per API request (reader, clusters, path, query, rows, status, ms, "
        "remote address) to this file; the lines also go to the log (logger kaudit.audit).",
    )
    api_allowed_hosts: str = Field(
        "",
        description="Comma-separated host names the query API/dashboard answers to (the Host header; loopback names "
        "always). Empty: any name with a token, only loopback names with open access (a DNS-rebinding guard).",
    )
    api_tls_cert: str = Field("", description="Certificate (chain, PEM) to serve the query API/dashboard over HTTPS.")
    api_tls_key: str = Field("", description="Private key (PEM) of api_tls_cert.")
    api_ca_file: str = Field(
        "", description="CA file that `kaudit query/sql/rbac` trust when KAUDIT_API_URL is https (default: system CAs)."
    )

    # --- query language: sources, saved searches, query alerts (pipeline/query, pipeline/searches) ----
    clusters_file: Path | None = Field(
        None,
        description="YAML clusters file: cluster -> group and labels (query fields monitor_group, tags; the "
        "dashboard's picker). Read again when it changes.",
    )
    query_alerts: bool = Field(
        True,
        description="Evaluate query alerts (kaudit alert add) in the process that owns the warehouse (the sink in "
        "embedded mode); `kaudit alert run` evaluates them anywhere else.",
    )

    # --- read limits (sqlguard: every API/dashboard/CLI read, raw SQL and query language; 0 = no limit) ------
    query_max_execution_time: int = Field(30, description="Seconds a read may run (max_execution_time).")
    query_max_memory_usage: int = Field(
        2 * 1024**3, description="Bytes of memory one read may use (max_memory_usage)."
    )
    query_max_rows_to_read: int = Field(
        2_000_000_000, description="Rows one read may scan, table functions included (max_rows_to_read)."
    )
    query_max_bytes_to_read: int = Field(
        200 * 1024**3, description="Uncompressed bytes one read may scan (max_bytes_to_read)."
    )
    query_max_result_rows: int = Field(1_000_000, description="Rows a read may return (max_result_rows).")
    query_max_result_bytes: int = Field(
        512 * 1024**2, description="Bytes a read may return, uncompressed (max_result_bytes)."
    )
    reader_user: str = Field(
        "", description="ClickHouse server: the read-only user the query API/CLI reads as (kaudit migrate "
        "--reader-user creates it); empty = the DSN's user."
    )
    reader_password: str = Field("", description="Password of reader_user.")

    # --- notify and worker metrics (notify helper: pipeline/notify/, kaudit notify; worker /metrics) ---------
    notify_routing_file: Path | None = Field(
        None, description="kaudit notify: destinations and routes (YAML; see pipeline/notify/routing.py)."
    )
    notify_group: str = Field("kaudit-notify", description="kaudit notify: Kafka consumer group on the alerts topic.")
    notify_dashboard_url: str = Field(
        "", description="kaudit notify: dashboard base URL for links in alerts (the routing file may override it)."
    )
    notify_metrics_port: int = Field(0, description="kaudit notify: serve /metrics and /healthz on this port (0 = off).")
    notify_state_retention_days: float = Field(
        7.0, description="kaudit notify: how long a delivered alert id is remembered per destination."
    )
    kafka_replication_factor: int = Field(
        1, description="Replicas of every project topic when kaudit creates it (3 on a three-broker cluster)."
    )
    kafka_min_insync_replicas: int = Field(
        1, description="min.insync.replicas of created topics: acks=all then means this many brokers have a record."
    )
    worker_metrics_port: int = Field(
        0, description="kaudit worker: serve /metrics and /healthz on this port (0 = off).",
    )

    @property
    def fetch_max_bytes(self) -> int:
        """Consumers' fetch.max.bytes: a whole record fits, and never below librdkafka's message.max.bytes
        default (1,000,000), which it requires (a KAUDIT_MAX_MESSAGE_BYTES under 1 MB must not stop consumers)."""
        return max(self.max_message_bytes, 1_048_576)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def chdb_path(self) -> Path:
        return self.var / "chdb"

    @property
    def effective_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.chdb_path.resolve()}"


# Topic base names; use Settings.topic() to get the prefixed name.
RAW = "k8s-audit-raw"
EVENTS = "k8s-audit-events"
DEADLETTER = "k8s-audit-deadletter"
VERB_STATS = "k8s-audit-verb-stats"
STATUS_STATS = "k8s-audit-status-stats"
ALERTS = "k8s-audit-alerts"
ALERTS_JSON = "k8s-audit-alerts-json"
MEMORY = "k8s-audit-memory"  # rules with memory: compacted, one record per memory key (pipeline/agents/memory.py)
ALL_TOPICS = (RAW, EVENTS, DEADLETTER, VERB_STATS, STATUS_STATS, ALERTS, ALERTS_JSON, MEMORY)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
