"""Constants shared by the test modules (kept out of conftest.py, whose name benches/ shares)."""

NOW = 1_800_000_000.0
