"""rate and concurrency limits: request windows, parked tasks, the claim and the dispatcher

Adds the UNLOGGED `rate_limit_windows` (each rate-limited client's current window of
requests), and for `max_in_flight`: `tasks.parked_at` (a queued task waiting for a slot,
without a job) and `tasks.claimed_at` (when it was last claimed), their partial indexes,
and four SQL functions, each a rule kept once and called by name:

- `edithook_claim_task_v1(task_id)`: the claim of a queued task, `claimed` with its request,
  `parked` when its client has no slot free (or an older task of its client has yet to make
  its first claim), or `not_queued`;
- `edithook_dispatch_parked_v1(batch)`: hands a submit job to the oldest parked tasks of
  every client with free slots, one client's task after another's (round-robin), at most
  `batch` in all; answers how many;
- `edithook_wake_dispatcher_v1()`: defers the `dispatch_parked` job unless one is waiting;
- `edithook_slot_freed_v1()`, the trigger `tasks_slot_freed`: a task leaving flight (or a
  queued one cancelled) wakes the dispatcher when its client has parked tasks.

Revision ID: 5d3f0b8e2c46
Revises: 4c2e9a7d1b35
Created: 2026-12-02 12:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d3f0b8e2c46"
down_revision: str | None = "4c2e9a7d1b35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The statuses that hold one of a client's slots are written out below as this revision
# knows them ('submitting', 'pending', 'processing': app.vocabulary.HOLDING_A_SLOT).

WAKE = """
CREATE FUNCTION edithook_wake_dispatcher_v1() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- One waiting dispatcher is enough: it reads the state when it runs.
    IF EXISTS (SELECT 1 FROM procrastinate_jobs
               WHERE queueing_lock = 'dispatch_parked' AND status = 'todo') THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
            'default', 'dispatch_parked', 1, 'dispatch_parked', 'dispatch_parked',
            '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1]);
    EXCEPTION WHEN unique_violation THEN
        NULL;  -- another transaction deferred it meanwhile
    END;
END;
$$;
"""

CLAIM = """
CREATE FUNCTION edithook_claim_task_v1(p_task_id uuid)
RETURNS TABLE (outcome text, request jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    t_client text;
    t_created timestamptz;
    t_limit integer;
    t_holding integer;
    t_request jsonb;
BEGIN
    SELECT t.client, t.created_at, c.max_in_flight INTO t_client, t_created, t_limit
    FROM tasks t LEFT JOIN clients c ON c.name = t.client
    WHERE t.id = p_task_id AND t.status = 'queued'
      AND (t.cancel_at IS NULL OR t.cancel_at > now());
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_queued'::text, NULL::jsonb;
        RETURN;
    END IF;
    IF t_limit IS NOT NULL THEN
        -- One claim of this client's at a time. Each statement below reads what committed
        -- before it began, so after the lock it sees every earlier claim of the client.
        PERFORM pg_advisory_xact_lock(hashtext('edithook_in_flight'), hashtext(t_client));
        SELECT count(*) INTO t_holding FROM tasks
        WHERE client = t_client AND status IN ('submitting', 'pending', 'processing');
        IF t_holding >= t_limit OR EXISTS (
            SELECT 1 FROM tasks o
            WHERE o.client = t_client AND o.status = 'queued'
              AND o.claimed_at IS NULL AND o.parked_at IS NULL
              AND (o.created_at, o.id) < (t_created, p_task_id)
              AND (o.cancel_at IS NULL OR o.cancel_at > now())
        ) THEN
            UPDATE tasks SET parked_at = coalesce(parked_at, clock_timestamp())
            WHERE id = p_task_id AND status = 'queued';
            RETURN QUERY SELECT 'parked'::text, NULL::jsonb;
            RETURN;
        END IF;
    END IF;
    UPDATE tasks SET status = 'submitting', updated_at = now(),
                     claimed_at = clock_timestamp(), parked_at = NULL
    WHERE id = p_task_id AND status = 'queued'
      AND (cancel_at IS NULL OR cancel_at > now())
    RETURNING tasks.request INTO t_request;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_queued'::text, NULL::jsonb;
        RETURN;
    END IF;
    -- Slots still free and tasks parked (an older task's claim that newer ones waited for).
    IF t_limit IS NOT NULL AND t_holding + 1 < t_limit AND EXISTS (
        SELECT 1 FROM tasks p
        WHERE p.client = t_client AND p.status = 'queued' AND p.parked_at IS NOT NULL
    ) THEN
        PERFORM edithook_wake_dispatcher_v1();
    END IF;
    RETURN QUERY SELECT 'claimed'::text, t_request;
END;
$$;
"""

DISPATCH = """
CREATE FUNCTION edithook_dispatch_parked_v1(p_batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    chosen uuid[];
BEGIN
    WITH waiting AS (
        SELECT c.name AS client,
               coalesce(c.max_in_flight
                   - (SELECT count(*) FROM tasks f
                      WHERE f.client = c.name AND f.status IN ('submitting', 'pending', 'processing'))
                   - (SELECT count(*) FROM tasks u
                      WHERE u.client = c.name AND u.status = 'queued'
                        AND u.claimed_at IS NULL AND u.parked_at IS NULL),
                   p_batch) AS free
        FROM clients c
        WHERE EXISTS (SELECT 1 FROM tasks p
                      WHERE p.client = c.name AND p.status = 'queued'
                        AND p.parked_at IS NOT NULL)
    ), picked AS (
        SELECT p.id, p.created_at,
               row_number() OVER (PARTITION BY w.client ORDER BY p.created_at, p.id) AS turn
        FROM waiting w CROSS JOIN LATERAL (
            SELECT t.id, t.created_at FROM tasks t
            WHERE t.client = w.client AND t.status = 'queued' AND t.parked_at IS NOT NULL
            ORDER BY t.created_at, t.id
            LIMIT greatest(w.free, 0)
        ) p
    ), turns AS (
        SELECT id FROM picked ORDER BY turn, created_at, id LIMIT p_batch
    ), unparked AS (
        UPDATE tasks t SET parked_at = NULL FROM turns
        WHERE t.id = turns.id AND t.status = 'queued' AND t.parked_at IS NOT NULL
        RETURNING t.id
    )
    SELECT array_agg(id) INTO chosen FROM unparked;
    IF chosen IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW('default', 'submit_task', 0, NULL, NULL,
                   jsonb_build_object('task_id', id::text), NULL)::procrastinate_job_to_defer_v1
        FROM unnest(chosen) AS id));
    RETURN cardinality(chosen);
END;
$$;
"""

SLOT_FREED = """
CREATE FUNCTION edithook_slot_freed_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tasks p
               WHERE p.client = NEW.client AND p.status = 'queued'
                 AND p.parked_at IS NOT NULL) THEN
        PERFORM edithook_wake_dispatcher_v1();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_slot_freed AFTER UPDATE OF status ON tasks
FOR EACH ROW WHEN (
    (OLD.status IN ('submitting', 'pending', 'processing') AND NEW.status NOT IN ('submitting', 'pending', 'processing'))
    OR (OLD.status = 'queued' AND NEW.status = 'cancelled')
)
EXECUTE FUNCTION edithook_slot_freed_v1();
"""


def upgrade() -> None:
    op.create_table(
        "rate_limit_windows",
        sa.Column("client", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.CheckConstraint("used >= 1", name=op.f("ck_rate_limit_windows_used")),
        sa.PrimaryKeyConstraint("client", name=op.f("pk_rate_limit_windows")),
        prefixes=["UNLOGGED"],
    )
    op.add_column("tasks", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tasks", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_tasks_parked",
        "tasks",
        ["client", "created_at", "id"],
        postgresql_where=sa.text("status = 'queued' AND parked_at IS NOT NULL"),
    )
    op.create_index(
        "ix_tasks_unclaimed",
        "tasks",
        ["client", "created_at", "id"],
        postgresql_where=sa.text("status = 'queued' AND claimed_at IS NULL AND parked_at IS NULL"),
    )
    op.execute(WAKE)
    op.execute(CLAIM)
    op.execute(DISPATCH)
    op.execute(SLOT_FREED)


def downgrade() -> None:
    op.execute("DROP TRIGGER tasks_slot_freed ON tasks")
    op.execute("DROP FUNCTION edithook_slot_freed_v1()")
    op.execute("DROP FUNCTION edithook_dispatch_parked_v1(integer)")
    op.execute("DROP FUNCTION edithook_claim_task_v1(uuid)")
    op.execute("DROP FUNCTION edithook_wake_dispatcher_v1()")
    # A parked task has no job: give it one, as before this revision every queued task had.
    op.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY(SELECT ROW('default', 'submit_task', 0,"
        " NULL, NULL, jsonb_build_object('task_id', id::text), NULL)"
        "::procrastinate_job_to_defer_v1 FROM tasks"
        " WHERE status = 'queued' AND parked_at IS NOT NULL))"
    )
    op.drop_index("ix_tasks_unclaimed", table_name="tasks")
    op.drop_index("ix_tasks_parked", table_name="tasks")
    op.drop_column("tasks", "claimed_at")
    op.drop_column("tasks", "parked_at")
    op.drop_table("rate_limit_windows")
