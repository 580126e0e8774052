"""Filling the benchmark database with millions of realistic tasks, in minutes.

Tasks go in with `COPY tasks (…) FROM STDIN` through psycopg 3, one transaction per batch,
the rows formatted in Python while a writer thread streams the previous ones to Postgres.
The table's secondary indexes (those that back no constraint) are dropped for the load and
rebuilt after it from their own definitions; the primary key and the unique provider id stay.
Result rows for completed tasks are then derived in one set-based `INSERT … SELECT`.

What the rows look like (all from a seeded random generator, so a run is reproducible):

- clients: `acme` owns 80 % of the tasks (the listing benchmark queries it), four others
  5 % each;
- history: created over the 90 days before `now`, oldest first (a real table is appended to
  in time order), 88 % completed, 8 % failed, 4 % cancelled, each with its provider id,
  usage, timestamps, and for completed ones one to four stored result rows;
- ingest targets: the newest rows, `pending` or `processing` with a provider id, which the
  callback benchmark completes; `seed_tasks` returns them;
- requests like the API stores them (prompt, one or two https image URLs, n, flags, now and
  then size, seed and negative prompt), metadata on two tasks in three, an idempotency key
  on half.

No task is `queued` or `submitting` and no result is `pending`, so a worker started on this
data finds nothing to submit or copy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

CLIENTS: tuple[tuple[str, float], ...] = (
    ("acme", 0.80),
    ("globex", 0.05),
    ("initech", 0.05),
    ("umbrella", 0.05),
    ("hooli", 0.05),
)
LIST_CLIENT = "acme"
HISTORY = timedelta(days=90)
# Ingest targets were created in this window before `now`; the history ends where it starts.
IN_FLIGHT_WINDOW = timedelta(hours=3)

COLUMNS = (
    "id, client, status, progress, request, metadata, idempotency_key, request_hash,"
    " provider_task_id, estimated_seconds, usage, error_code, error_message, resolved_by,"
    " poll_count, created_at, updated_at, submitted_at, finished_at, images_reserved,"
    " images_charged"
)
BATCH_ROWS = 200_000
CHUNK_ROWS = 5_000

PROMPTS = (
    "Replace the background with a snowy mountain range, keep the person unchanged",
    "Make it look like a watercolour painting",
    "Remove the text from the sign and keep the lighting",
    "Change the jacket to dark green leather",
    "Put the product on a marble table in soft morning light",
    "Turn the daytime street scene into night with neon reflections",
    "Add a golden retriever sitting next to the bench",
    "Swap the sky for a dramatic sunset with orange clouds",
)
FAILURES = (
    ("content_policy_violation", "Content policy violation. Change the prompt or the images."),
    ("image_processing_error", "The input image could not be fetched or decoded."),
    ("generation_timeout", "Generation timed out, retry later."),
)
RESULTS_SQL = """
INSERT INTO task_results (task_id, index, provider_url, status, content_type, size_bytes,
                          sha256, width, height, storage_key, created_at, stored_at)
SELECT t.id, g.i,
       'https://files.evolink.ai/' || t.provider_task_id || '/' || g.i || '.png',
       'stored', 'image/png', 150000 + (hashtext(t.id::text || g.i) & 262143),
       md5(t.id::text || g.i) || md5(g.i || t.id::text), 1024, 1024,
       'results/' || t.id || '/' || g.i || '.png', t.finished_at,
       t.finished_at + interval '2 seconds'
FROM tasks AS t
CROSS JOIN LATERAL generate_series(0, (t.request->>'n')::int - 1) AS g(i)
WHERE t.status = 'completed'
  AND NOT EXISTS (SELECT 1 FROM task_results AS r WHERE r.task_id = t.id)
ORDER BY t.id, g.i
"""


@dataclass(frozen=True)
class Target:
    """An in-flight task a completion callback can be sent for."""

    task_id: str
    provider_task_id: str
    results: int


@dataclass
class SeedReport:
    """What one `seed_tasks` call added and how long it took."""

    tasks: int = 0
    results: int = 0
    seconds: float = 0.0
    # Of `seconds`: the COPY batches, and rebuilding the indexes plus deriving results.
    copy_seconds: float = 0.0
    targets: list[Target] = field(default_factory=list)


def _uuid4(rng: random.Random) -> str:
    bits = rng.getrandbits(128)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[bits & 3]}{h[17:20]}-{h[20:]}"


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(sep=" ")


def _base36(number: int, width: int = 8) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out.rjust(width, "0")


class _Rows:
    """Formats task rows in COPY text format; `serial` makes provider ids and keys unique."""

    def __init__(self, rng: random.Random, first_serial: int) -> None:
        self.rng = rng
        self.serial = first_serial
        self.targets: list[Target] = []
        weights = [share for _, share in CLIENTS]
        self._clients = rng.choices([name for name, _ in CLIENTS], weights, k=100_003)

    def row(self, created: float, *, in_flight: bool) -> str:
        rng = self.rng
        self.serial += 1
        task_id = _uuid4(rng)
        client = self._clients[self.serial % len(self._clients)]
        roll, fate = rng.random(), rng.random()
        n = 1 if roll < 0.80 else 2 if roll < 0.95 else 4
        prompt = PROMPTS[self.serial % len(PROMPTS)]
        images = f'"https://cdn.example.com/in/{rng.getrandbits(64):016x}.png"'
        if roll > 0.9:
            images += f', "https://cdn.example.com/ref/{rng.getrandbits(64):016x}.jpg"'
        extra = ""
        if n == 1 and roll < 0.3:
            extra += ', "size": "1024x1536"'
        if roll < 0.2:
            extra += f', "seed": {rng.getrandbits(31)}'
        if 0.4 < roll < 0.5:
            extra += ', "negative_prompt": "blurry, low quality"'
        request = (
            f'{{"prompt": "{prompt}", "image_urls": [{images}], "n": {n},'
            f' "prompt_extend": true, "watermark": false{extra}}}'
        )
        metadata = (
            f'{{"order_id": "A-{self.serial}", "team": "{client}-web"}}'
            if self.serial % 3
            else "{}"
        )
        key = f"order-{self.serial}" if self.serial % 2 else "\\N"
        provider_id = f"task-unified-{int(created)}-{_base36(self.serial)}"
        usage = f'{{"billing_rule": "per_call", "credits_reserved": {n}, "user_group": "default"}}'
        submitted = created + 0.3 + rng.random()
        if in_flight:
            status, progress = ("processing", 50) if fate < 0.7 else ("pending", 0)
            self.targets.append(Target(task_id, provider_id, n))
            updated, finished = submitted + 2.0, None
            error_code = error_message = resolved_by = "\\N"
        else:
            finished = submitted + 8.0 + 30.0 * rng.random()
            updated = finished
            resolved_by = "callback" if rng.random() < 0.97 else "poll"
            error_code = error_message = "\\N"
            if fate < 0.88:
                status, progress = "completed", 100
            elif fate < 0.96:
                status, progress = "failed", 10
                error_code, error_message = FAILURES[self.serial % len(FAILURES)]
            else:
                status, progress = "cancelled", 10
                error_code, error_message = "request_cancelled", "The request was cancelled."
        return "\t".join(
            (
                task_id,
                client,
                status,
                str(progress),
                request,
                metadata,
                key,
                f"{rng.getrandbits(256):064x}",
                provider_id,
                "18",
                usage,
                error_code,
                error_message,
                resolved_by,
                "0",
                _ts(created),
                _ts(updated),
                _ts(submitted),
                _ts(finished) if finished is not None else "\\N",
                str(n),
                "\\N" if in_flight else str(n) if status == "completed" else "0",
            )
        )


def _times(count: int, start: float, end: float, rng: random.Random) -> Iterator[float]:
    """`count` ascending instants spread evenly over [start, end)."""
    step = (end - start) / max(1, count)
    for i in range(count):
        yield start + (i + rng.random()) * step


def _secondary_indexes(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(x.indexrelid) FROM pg_index AS x"
        " JOIN pg_class AS c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = x.indexrelid)",
        (table,),
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def _copy_batch(conn: psycopg.Connection, lines: Iterator[str], rows: int) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        statement = sql.SQL("COPY tasks ({}) FROM STDIN").format(sql.SQL(COLUMNS))
        with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
            chunk: list[str] = []
            for _ in range(rows):
                chunk.append(next(lines))
                if len(chunk) == CHUNK_ROWS:
                    copy.write("\n".join(chunk) + "\n")
                    chunk.clear()
            if chunk:
                copy.write("\n".join(chunk) + "\n")


def seed_tasks(
    url: str,
    count: int,
    *,
    now: datetime,
    targets: int = 0,
    first_serial: int = 0,
    random_seed: int = 20261124,
    progress: bool = False,
) -> SeedReport:
    """Add `count` tasks (the newest `targets` of them in flight), then their result rows.

    `first_serial` must exceed every serial used by an earlier call on the same database
    (it keeps provider ids and idempotency keys unique); `now` anchors the 90-day history.
    """
    if targets > count:
        raise ValueError("more targets than tasks")
    started = time.perf_counter()
    rng = random.Random(random_seed + first_serial)  # noqa: S311 - reproducible data
    maker = _Rows(rng, first_serial)
    end = now.timestamp()
    split = end - IN_FLIGHT_WINDOW.total_seconds()
    history = count - targets

    def lines() -> Iterator[str]:
        for created in _times(history, end - HISTORY.total_seconds(), split, rng):
            yield maker.row(created, in_flight=False)
        for created in _times(targets, split, end - 300, rng):
            yield maker.row(created, in_flight=True)

    stream = lines()
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET work_mem = '256MB'")
        indexes = _secondary_indexes(conn, "tasks")
        with conn.transaction():
            for name, _ in indexes:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        try:
            done = 0
            while done < count:
                rows = min(BATCH_ROWS, count - done)
                _copy_batch(conn, stream, rows)
                done += rows
                if progress:
                    rate = done / (time.perf_counter() - started)
                    print(f"  seeded {done:,}/{count:,} tasks ({rate:,.0f}/s)", flush=True)
            copied = time.perf_counter() - started
        finally:
            with conn.transaction():
                for _, definition in indexes:
                    conn.execute(definition)
        with conn.transaction():
            results = conn.execute(RESULTS_SQL).rowcount
    return SeedReport(
        tasks=count,
        results=results,
        seconds=time.perf_counter() - started,
        copy_seconds=copied,
        targets=maker.targets,
    )
