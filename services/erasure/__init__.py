"""Erasing a user from every store."""
