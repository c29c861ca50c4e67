"""ClickHouse: one way to open a client (embedded chDB or a server), and the schema migrations."""

from pipeline.warehouse.client import open_client

__all__ = ["open_client"]
