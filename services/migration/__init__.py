"""Moving vigil's state from a single Redis to a Redis Cluster (``vigil migrate-state``)."""
