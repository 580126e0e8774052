"""Budgets: what a client may spend per UTC day or month, reserved and settled exactly."""
