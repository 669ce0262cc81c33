"""Dispatch: routing, grouping, lifecycle, escalation and silences (pure logic)."""
