"""Clients and their API keys: the admin API, the operators' CLI, and the key cache."""
