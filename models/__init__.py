"""Data shapes only: pydantic payloads, envelopes and SQLAlchemy tables. No I/O."""
