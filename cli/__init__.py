"""The ``vigil`` operator command line."""
