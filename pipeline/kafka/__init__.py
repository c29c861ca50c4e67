"""Kafka I/O shared by every component: topic creation, producers (sync and asyncio), consumers, headers."""
