"""Shared stream infrastructure: settings, schemas, Kafka admin/serde, sinks, batcher, embedded stack."""
