"""The task lifecycle: statuses, their order, and how provider statuses map onto them."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# A status may only be replaced by one of higher rank; terminal statuses share the top rank,
# so nothing ever replaces them.
RANK = {
    TaskStatus.QUEUED: 0,
    TaskStatus.SUBMITTING: 1,
    TaskStatus.PENDING: 2,
    TaskStatus.PROCESSING: 3,
    TaskStatus.COMPLETED: 4,
    TaskStatus.FAILED: 4,
    TaskStatus.CANCELLED: 4,
}


class ResultStatus(StrEnum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


class EventKind(StrEnum):
    """What caused an event."""

    CREATED = "created"
    SUBMISSION = "submission"
    CALLBACK = "callback"
    POLL = "poll"
    STORAGE = "storage"  # copying result images into our storage
    SYSTEM = "system"  # edithook's own decisions, such as giving up on a silent submission


class EventOutcome(StrEnum):
    """What an event did to its task."""

    APPLIED = "applied"  # it moved the task (from_status → to_status)
    DUPLICATE = "duplicate"  # it repeated what the task already says
    STALE = "stale"  # it was older than what the task already says
    ANOMALY = "anomaly"  # it contradicts a terminal state, or cannot be matched; kept, not applied
    REJECTED = "rejected"  # its body could not be read
    ERROR = "error"  # the provider call behind it failed


CANCELLED_ERROR_CODE = "request_cancelled"


def status_from_provider(status: str, error_code: str | None) -> TaskStatus | None:
    """Our status for a provider status, or None for one we do not know.

    The provider reports a cancellation either as `cancelled` or as `failed` with the error
    code `request_cancelled`; both become `cancelled`.
    """
    match status:
        case "pending":
            return TaskStatus.PENDING
        case "processing":
            return TaskStatus.PROCESSING
        case "completed":
            return TaskStatus.COMPLETED
        case "failed" if error_code == CANCELLED_ERROR_CODE:
            return TaskStatus.CANCELLED
        case "failed":
            return TaskStatus.FAILED
        case "cancelled":
            return TaskStatus.CANCELLED
        case _:
            return None
