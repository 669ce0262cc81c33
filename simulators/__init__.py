"""Realistic station simulators with fault injection."""
