"""Integration tests: a real Postgres, the service and the simulator over HTTP, in-process."""
