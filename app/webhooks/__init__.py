"""Signed webhooks to callers: endpoints, secrets, messages, delivery, the log and replay."""
