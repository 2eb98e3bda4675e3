"""Running vigil locally: embedded servers, discovery, the process supervisor and the demo feed.

Nothing here is imported by a worker."""
