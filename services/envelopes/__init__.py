"""Versioned envelopes on Redis Streams: publishing, reading, consumer groups, the outbox."""
