"""A client's `max_in_flight`: tasks beyond it wait parked, and are sent oldest first as
slots free, one client's turn after another's.

A task holds one of its client's slots while it is `submitting`, `pending` or `processing`
(`app.vocabulary.HOLDING_A_SLOT`). The limit itself is held by the claim
(`app.tasks.submission.CLAIM`, the SQL function `edithook_claim_task_v1`): under a
per-client lock it counts the client's tasks in flight, and a task that finds no slot is
*parked* — left `queued`, with `parked_at` set and no job — rather than refused or retried.

A limited client's new task is parked at once (`start_submission`), so that a backlog of
thousands is thousands of rows, not thousands of jobs ahead of other clients' in the queue.
The dispatcher (`edithook_dispatch_parked_v1`, run by the `dispatch_parked` job) hands a
submit job to the oldest parked tasks of every client with free slots, taking each client's
first task before anyone's second, so one client's backlog never delays another client's
tasks. It is woken — the job deferred, unless one already waits — by a new parked task, by
a task of a client with parked tasks leaving flight or being cancelled while queued (the
trigger `tasks_slot_freed`: every path that moves a task goes through it, callbacks, polls,
requeues and cancels alike), and by a claim that leaves slots free while tasks wait. It
also runs every few seconds, to catch whatever a wake-up missed. A parked task still obeys
cancels and its `cancel_at` like any queued task, and the sweeper leaves it alone: having
no job is its normal state.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.jobs import SUBMIT_TASK, enqueue
from app.models import Client, Task

# The most tasks one statement of the dispatcher hands jobs to; it runs again while full.
DISPATCH_BATCH = 500


def parked_if_limited(client: str) -> Any:
    """For a new task's `parked_at`: now if `client` has a `max_in_flight`, else NULL."""
    return (
        select(case((Client.max_in_flight.is_not(None), func.clock_timestamp())))
        .where(Client.name == client)
        .scalar_subquery()
    )


async def wake_dispatcher(session: AsyncSession) -> None:
    """Defer the dispatcher in the session's transaction, unless one already waits."""
    await session.execute(text("SELECT edithook_wake_dispatcher_v1()"))


async def start_submission(session: AsyncSession, task: Task) -> None:
    """What a new task needs to be sent, in the transaction that stores it: its submit job,
    or, parked (its client has a `max_in_flight`), a wake-up of the dispatcher."""
    if task.parked_at is None:
        await enqueue(session, SUBMIT_TASK, {"task_id": str(task.id)})
    else:
        await wake_dispatcher(session)


async def dispatch_parked(
    sessions: async_sessionmaker[AsyncSession], *, batch: int = DISPATCH_BATCH
) -> int:
    """Hand submit jobs to the parked tasks that have a free slot, oldest first and
    round-robin across clients, `batch` at a time until none is left; how many it did."""
    dispatched = 0
    while True:
        async with transaction(sessions) as session:
            count = int(
                await session.scalar(
                    text("SELECT edithook_dispatch_parked_v1(:batch)"), {"batch": batch}
                )
                or 0
            )
        dispatched += count
        if count < batch:
            return dispatched
