"""Derived metrics: readings computed from other readings before rules apply."""
