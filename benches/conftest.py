"""Fixtures and the ratio report live in benchsupport; pytest finds them through this file."""

from benchsupport import pytest_terminal_summary, queries, stored_queries, workload  # noqa: F401
