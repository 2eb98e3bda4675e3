"""Behavioural attribution in PostgreSQL (DECNET reference engine).

- ``aggregate``: the pure rules (states unknown, stable, drifting, conflicted,
  multi_actor) over a bounded slice of observations.
- ``repository``: every query (race-free upserts, bounded reads, erase).
- ``service``: ``apply_detections`` for the ingest tasks, and the reads the CLI
  uses (``identity_of``, ``states_of_identity``, ``flagged_identities``).
- ``correlator``: the beat job announcing identities suspected of being shared.
"""
