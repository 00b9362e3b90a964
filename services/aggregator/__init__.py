"""The aggregator (cloud node): rounds, aggregation strategies, persisted run state, REST routes."""
