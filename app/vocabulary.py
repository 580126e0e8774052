"""The words the task state machine speaks: statuses, event kinds, outcomes, who resolved.

Everything here is a plain enum or constant with no imports from the rest of edithook, so
the models, the schemas, the rules and the SQL that needs a list of statuses all take their
values from one place.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task stands; the last three are terminal."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
IN_FLIGHT = frozenset(status for status in TaskStatus if status not in TERMINAL)

# What counts against a client's `max_in_flight`: claimed for sending, or with the provider.
HOLDING_A_SLOT = frozenset({TaskStatus.SUBMITTING, TaskStatus.PENDING, TaskStatus.PROCESSING})

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
    """Where our copy of one result image stands."""

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
    CLIENT = "client"  # the task's client asked for it (a cancel)


class EventOutcome(StrEnum):
    """What an event did to its task."""

    APPLIED = "applied"  # it moved the task (from_status → to_status) or changed its fields
    DUPLICATE = "duplicate"  # it repeated what the task already says
    STALE = "stale"  # it was older than what the task already says
    ANOMALY = "anomaly"  # it contradicts a terminal state, or cannot be matched; kept, not applied
    REJECTED = "rejected"  # its body could not be read
    ERROR = "error"  # the provider call behind it failed


# Outcomes that never move a task: an event with one of these leaves the task row as it was.
NOT_MOVING = frozenset(
    {EventOutcome.DUPLICATE, EventOutcome.STALE, EventOutcome.ANOMALY, EventOutcome.REJECTED}
)


class ResolvedBy(StrEnum):
    """What told us a task's terminal state."""

    CALLBACK = "callback"
    POLL = "poll"
    SUBMISSION = "submission"  # the create's own answer
    SYSTEM = "system"  # edithook's own decision (a time limit, a vanished provider task)
    CLIENT = "client"  # the task's client cancelled it before it was submitted


# The provider's largest `n`: no task may ask for, or have, more results than that.
MAX_RESULTS = 6


def sql_list(values: frozenset[StrEnum] | type[StrEnum]) -> str:
    """`values` as an SQL list of string literals, sorted: `'a', 'b'` (enum values only)."""
    return ", ".join(sorted(f"'{value.value}'" for value in values))


class WebhookType(StrEnum):
    """The events a caller can be told about (Standard Webhooks message `type`)."""

    SUBMITTED = "task.submitted"  # EvoLink accepted it: the task moved to pending
    SUCCEEDED = "task.succeeded"  # completed, and every result stored or failed
    FAILED = "task.failed"
    CANCELLED = "task.cancelled"
    # The client's spend in its budget period reached its soft threshold (no task: a message
    # about the client, made once per period by the create that crossed it).
    BUDGET_THRESHOLD = "client.budget_threshold"


# The task status whose arrival makes a message of that type (task.succeeded is made when
# the completed task's results are settled, not by the move itself).
WEBHOOK_TYPE_OF_STATUS = {
    TaskStatus.PENDING: WebhookType.SUBMITTED,
    TaskStatus.FAILED: WebhookType.FAILED,
    TaskStatus.CANCELLED: WebhookType.CANCELLED,
}


class MessageStatus(StrEnum):
    """Where a webhook message stands: still to deliver, delivered, or given up on."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ClientStatus(StrEnum):
    """Whether a client's keys are accepted."""

    ACTIVE = "active"
    DISABLED = "disabled"


class BudgetPeriod(StrEnum):
    """The UTC period a client's image budget covers."""

    DAY = "day"
    MONTH = "month"
