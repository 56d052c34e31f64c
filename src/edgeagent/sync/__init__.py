"""Upstream sync: one worker per destination, reading from its cursor in the store."""
