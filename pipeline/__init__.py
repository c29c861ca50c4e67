"""kaudit: Kubernetes audit events from many clusters through Kafka into ClickHouse."""

__version__ = "0.1.0"
