"""All I/O and logic of vigil; tasks and the CLI call into these modules."""
