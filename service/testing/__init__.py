"""Helpers for tests and benchmarks that run the service's real processes.

Nothing in the service imports this package; the running service never loads it.
"""
