"""Delivery sinks: where alert events reach people (and files)."""
