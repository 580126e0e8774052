"""Faults against real serve and worker processes: outages, kills, stalls."""
