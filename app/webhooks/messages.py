"""Making webhook messages, in the transaction of the change they report.

One message per recipient: each of the client's enabled endpoints subscribed to the type,
and the task's own `webhook_url`. Each message's delivery job is deferred by the same
statement that inserts it, so a committed message never lacks its job.

- `WRITER_CTE` is the part of the task writer's one statement (`app.tasks.writer`) for
  `task.submitted`, `task.failed` and `task.cancelled`: it reads the writer's `moved` CTE
  and inserts nothing unless the task has just moved into one of those statuses.
- `task.succeeded` is made by the result copy in the transaction that settles a completed
  task (every result stored or failed): `STORE_CTE` in its statement that stores the last
  image, `make_succeeded` where a failure settles it.
- `client.budget_threshold` is about a client, not a task (`task_id` null), and goes to its
  endpoints only: `make_client_message`, in the create's transaction that crossed the
  threshold (`app.budgets.spend`), with its payload rendered there and then.
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import DELIVER_WEBHOOK, WEBHOOK_PRIORITY, WEBHOOK_QUEUE
from app.vocabulary import WEBHOOK_TYPE_OF_STATUS, TaskStatus, WebhookType

# One row per recipient of the events in `source` (task_id, client, webhook_url, type).
# The message id is made in a subquery, so it is made once and the row and its job share it
# (a volatile expression keeps the subquery from being merged into its reader).
_INSERT: Final = """
    INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id, url)
    SELECT m.id, m.task_id, m.client, m.type, m.endpoint_id, m.url FROM (
        SELECT gen_random_uuid() AS id, src.task_id, src.client, src.type,
               e.id AS endpoint_id, NULL::text AS url
        FROM ({source}) AS src
        JOIN webhook_endpoints e ON e.client = src.client AND e.enabled
             AND (e.event_types IS NULL OR src.type = ANY(e.event_types))
        UNION ALL
        SELECT gen_random_uuid(), src.task_id, src.client, src.type, NULL, src.webhook_url
        FROM ({source}) AS src WHERE src.webhook_url IS NOT NULL
    ) AS m
    RETURNING id, procrastinate_defer_jobs_v1(ARRAY[ROW(
        '{queue}', '{job}', {priority}, 'webhook:' || id::text, NULL,
        jsonb_build_object('message_id', id::text), NULL
    )::procrastinate_job_to_defer_v1])
"""

_TYPE_OF_STATUS: Final = " ".join(
    f"WHEN '{status.value}' THEN '{kind.value}'" for status, kind in WEBHOOK_TYPE_OF_STATUS.items()
)
_WRITER_SOURCE: Final = f"""
    SELECT moved.id AS task_id, t.client, t.webhook_url,
           CASE %(to_status)s::text {_TYPE_OF_STATUS} END AS type
    FROM moved JOIN tasks t ON t.id = moved.id
    WHERE %(to_status)s::text IN ({", ".join(f"'{s.value}'" for s in WEBHOOK_TYPE_OF_STATUS)})
      AND moved.from_status <> %(to_status)s::text"""  # noqa: S608 - enum values only

# `, made_messages AS (...)`: one more CTE for the writer's statement, included only in
# the statements of verdicts that move a task into a status above (`tells`). A
# data-modifying CTE runs whether or not it is read; when the task did not actually move
# (a duplicate), its source is empty.
WRITER_CTE: Final = (
    ", made_messages AS ("
    + _INSERT.format(
        source=_WRITER_SOURCE, queue=WEBHOOK_QUEUE, job=DELIVER_WEBHOOK, priority=WEBHOOK_PRIORITY
    )
    + ")"
)


def tells(status: TaskStatus | None) -> bool:
    """Whether a move into `status` makes messages in the writer's statement: only then is
    `WRITER_CTE` part of it, so a completion's statement does not carry it at all."""
    return status in WEBHOOK_TYPE_OF_STATUS


# `, made_messages AS (...)` for the copy job's statement that records a stored image
# (`STORE` in `app.results.copy`, whose `stored` CTE and parameters it reads): when that
# image was the task's last pending one, `task.succeeded` for every recipient, once. The
# statement's snapshot still shows the stored row pending, hence `r.id <> row_id`. The copy
# jobs of one task share a procrastinate lock, so no two settle it at once.
STORE_CTE: Final = (
    ", made_messages AS ("  # noqa: S608 - enum values only
    + _INSERT.format(
        source=f"""
            SELECT t.id AS task_id, t.client, t.webhook_url,
                   '{WebhookType.SUCCEEDED.value}'::text AS type
            FROM (SELECT DISTINCT task_id FROM stored) AS s JOIN tasks t ON t.id = s.task_id
            WHERE t.status = '{TaskStatus.COMPLETED.value}'
              AND NOT EXISTS (SELECT 1 FROM task_results r
                              WHERE r.task_id = t.id AND r.status = %(pending)s
                                AND r.id <> %(row_id)s)
              AND NOT EXISTS (SELECT 1 FROM webhook_messages w
                              WHERE w.task_id = t.id
                                AND w.type = '{WebhookType.SUCCEEDED.value}')""",  # noqa: S608
        queue=WEBHOOK_QUEUE,
        job=DELIVER_WEBHOOK,
        priority=WEBHOOK_PRIORITY,
    )
    + ")"
)

_SUCCEEDED: Final = text(
    _INSERT.format(
        source=f"""
            SELECT t.id AS task_id, t.client, t.webhook_url,
                   '{WebhookType.SUCCEEDED.value}'::text AS type
            FROM tasks t
            WHERE t.id = :task_id AND t.status = '{TaskStatus.COMPLETED.value}'
              AND NOT EXISTS (SELECT 1 FROM webhook_messages w
                              WHERE w.task_id = t.id AND w.type = '{WebhookType.SUCCEEDED.value}')
              AND NOT EXISTS (SELECT 1 FROM task_results r
                              WHERE r.task_id = t.id AND r.status = 'pending')""",  # noqa: S608
        queue=WEBHOOK_QUEUE,
        job=DELIVER_WEBHOOK,
        priority=WEBHOOK_PRIORITY,
    )
)


async def make_succeeded(session: AsyncSession, task_id: uuid.UUID) -> None:
    """`task.succeeded` for every recipient, once, if the completed task is settled.

    Takes the task's row lock, so that two settling transactions cannot both make them.
    """
    await session.execute(text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE"), {"id": task_id})
    await session.execute(_SUCCEEDED, {"task_id": task_id})


_CLIENT_MESSAGE: Final = text(
    f"""
    INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id, url, payload)
    SELECT m.id, NULL, :client, :type, m.endpoint_id, NULL, :payload FROM (
        SELECT gen_random_uuid() AS id, e.id AS endpoint_id
        FROM webhook_endpoints e
        WHERE e.client = :client AND e.enabled
          AND (e.event_types IS NULL OR :type = ANY(e.event_types))
    ) AS m
    RETURNING id, procrastinate_defer_jobs_v1(ARRAY[ROW(
        '{WEBHOOK_QUEUE}', '{DELIVER_WEBHOOK}', {WEBHOOK_PRIORITY}, 'webhook:' || id::text, NULL,
        jsonb_build_object('message_id', id::text), NULL
    )::procrastinate_job_to_defer_v1])
    """  # noqa: S608 - constants only
)


async def make_client_message(
    session: AsyncSession, client: str, kind: WebhookType, payload: str
) -> int:
    """A message about the client itself for each of its enabled endpoints subscribed to
    `kind`, with its job; the payload is final (no task to render it from later). Returns
    how many were made."""
    made = await session.execute(
        _CLIENT_MESSAGE, {"client": client, "type": kind.value, "payload": payload}
    )
    return len(made.all())
