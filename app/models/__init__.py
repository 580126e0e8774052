"""The ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.task import Task, TaskEvent, TaskResult

__all__ = ["Task", "TaskEvent", "TaskResult"]
