"""Kafka -> ClickHouse writers (``kaudit sink``): idempotent, batched, offsets committed after the insert."""
