"""vigil's worker runtime: everything that customises Celery, kombu,
celery-batches and Flower, apart from the domain.

- ``broker``: the Redis transport (atomic fetch, heartbeats, fast recovery).
- ``base``: the app and task classes.
- ``redact``: what events, Flower and logs show of a task's arguments.
- ``batching``: buffered single-message tasks (the parent's side).
- ``settle``: the one settle path: retry policy, dead letters, a buffered
  request's result and event.
- ``queues``: RabbitMQ queues adopted as the vhost holds them, countdowns routed.
- ``signals``: what a worker, a pool process and beat do at start and stop.
- ``flower_guard``: Flower's login, however Flower is started.
- ``upstream``: every upstream internal the above relies on, with canaries.

``services/`` and ``models/`` import nothing from here; ``tasks/`` defines the
tasks on top of it.
"""
