"""vigil's worker runtime: everything that customises Celery, kombu,
celery-batches and Flower, apart from the domain.

- ``broker``: the Redis transport (atomic fetch, heartbeats, fast recovery).
- ``base``: the app and task classes, the redaction of arguments in events and logs.
- ``batching``: buffered single-message tasks.
- ``signals``: what a worker, a pool process and beat do at start and stop.
- ``flower_guard``: Flower's login, however Flower is started.
- ``upstream``: every upstream internal the above relies on, with canaries.

``services/`` and ``models/`` import nothing from here; ``tasks/`` defines the
tasks on top of it.
"""
