"""Usage: what clients' tasks reserved and were charged, summed over time, and budgets."""
