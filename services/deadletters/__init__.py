"""Rejected and failed task payloads kept in PostgreSQL with their reasons."""
