"""The test suite, in three layers by what a test talks to: unit, integration, processes."""
