"""Unit tests: no I/O beyond reading the repository's files; they run with Postgres unreachable."""
