"""Versioned envelopes on Redis Streams: publishing and reading (``streams``),
consumer groups and the quarantine of poison entries (``consumers``), the outbox."""
