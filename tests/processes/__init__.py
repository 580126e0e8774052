"""Process tests: edithook's own commands as real processes, a browser, faults injected."""
