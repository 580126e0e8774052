"""The ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.client import ApiKey, Client
from app.models.task import Task, TaskEvent, TaskResult
from app.models.upload import Upload
from app.models.webhook import (
    WebhookAttempt,
    WebhookClientSecret,
    WebhookEndpoint,
    WebhookMessage,
)

__all__ = [
    "ApiKey",
    "Client",
    "Task",
    "TaskEvent",
    "TaskResult",
    "Upload",
    "WebhookAttempt",
    "WebhookClientSecret",
    "WebhookEndpoint",
    "WebhookMessage",
]
