"""Shared infrastructure: settings, clients, Redis keys and the Lua scripts."""
