"""Webhooks to callers: how soon a caller hears of a finished edit, and how fast one worker
delivers.

Two endpoints are registered through the API (`POST /v1/webhook-endpoints`, development
allowing loopback), both at the receiver (`bench.receiver`, its own process), which
verifies every delivery with `standardwebhooks` and records its arrival:

- **completion → received**: the poster client's endpoint, every event type. `count` tasks
  are created one at a time with the worker running, each waited for until its
  `task.succeeded` has arrived. From the simulator's completion — its first callback
  attempt, `callbacks[0].at`, as the flows phase measures completion → stored — to the
  arrival of that verified delivery. The message carries the task settled, so this is
  completion → stored, plus making the message, the delivery job's pick-up, the render and
  the POST. The notes split it on the machine's one clock.
- **messages per second**: the listing client's endpoint. `messages` `task.succeeded`
  messages for as many of its completed tasks, and their delivery jobs, are inserted in one
  transaction (as the statements that settle tasks insert them, one job per message), and
  one worker delivers them to the receiver, which answers 204 at once: from that commit to
  the last arrival. Each is a first delivery, so each is rendered.

The endpoints are deleted at the end (their messages with them).
"""

from __future__ import annotations

import math
import os
import time
from itertools import pairwise
from typing import Any

import httpx
import psycopg

from app.jobs import DELIVER_WEBHOOK, QUEUE, STORE_RESULTS, WEBHOOK_PRIORITY
from app.vocabulary import MessageStatus, WebhookType
from bench import database
from bench.api_phases import EDIT
from bench.procs import cpu_cores, cpu_seconds, cpu_snapshot, postgres_cpu_by_pid
from bench.report import Measurements, WebhookRun, quantile
from bench.seed import LIST_CLIENT
from bench.stack import POSTER, Stack, bearer

TASKS = 200
MESSAGES = 2000
LATENCY, DRAIN = "latency", "drain"
SUCCEEDED = WebhookType.SUCCEEDED.value

# The shape of `app.webhooks.messages`' insert: one row per message, each deferring its own
# delivery job under the message's lock.
DRAIN_INSERT = f"""
INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id)
SELECT gen_random_uuid(), task_id, %(client)s, '{SUCCEEDED}', %(endpoint)s
FROM unnest(%(ids)s::uuid[]) AS task_id
RETURNING id, procrastinate_defer_jobs_v1(ARRAY[ROW(
    '{QUEUE}', '{DELIVER_WEBHOOK}', {WEBHOOK_PRIORITY}, 'webhook:' || id::text, NULL,
    jsonb_build_object('message_id', id::text), NULL
)::procrastinate_job_to_defer_v1])
"""  # noqa: S608 - constants only

# Per `task.succeeded` message of the given tasks, Unix times on the machine's one clock:
# the callback's completion recorded (its event, inserted by the receiver's statement), the
# copy job started (procrastinate's event: the fetching statement's now()), the message
# made (the copy's statement inserting it), its delivery job started, and the attempt's POST
# sent (recorded after the answer, less its latency).
SPLIT = f"""
SELECT m.task_id::text,
       (SELECT extract(epoch FROM min(ev.created_at)) FROM task_events ev
        WHERE ev.task_id = m.task_id AND ev.to_status = 'completed' AND ev.outcome = 'applied'),
       (SELECT extract(epoch FROM min(ce.at)) FROM procrastinate_jobs cj
        JOIN procrastinate_events ce ON ce.job_id = cj.id AND ce.type = 'started'
        WHERE cj.task_name = '{STORE_RESULTS}' AND cj.args->>'task_id' = m.task_id::text),
       extract(epoch FROM m.created_at),
       extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'started')),
       (SELECT extract(epoch FROM min(a.attempted_at)) - min(a.latency_ms) / 1000.0
        FROM webhook_attempts a WHERE a.message_id = m.id)
FROM webhook_messages m
JOIN procrastinate_jobs j ON j.task_name = '{DELIVER_WEBHOOK}'
     AND j.args->>'message_id' = m.id::text
JOIN procrastinate_events e ON e.job_id = j.id
WHERE m.task_id = ANY(%(ids)s::uuid[]) AND m.type = '{SUCCEEDED}'
GROUP BY m.id
"""  # noqa: S608 - constants only


def run_webhooks(
    stack: Stack, m: Measurements, count: int = TASKS, messages: int = MESSAGES
) -> None:
    """Both measurements, with the simulator, the API and the worker running; fills
    `m.webhooks` and its notes. Starts the receiver if it is not running."""
    if stack.receiver is None:
        stack.start_receiver()
    assert stack.receiver is not None
    run = WebhookRun(tasks=count, messages=messages)
    m.webhooks = run
    endpoints = {
        LATENCY: _register(stack, POSTER, LATENCY),
        DRAIN: _register(stack, LIST_CLIENT, DRAIN),
    }
    with httpx.Client(base_url=stack.receiver.url or "", timeout=60) as receiver:
        receiver.put(
            "/_bench/secrets", json={name: found["secret"] for name, found in endpoints.items()}
        ).raise_for_status()
    try:
        _latency(stack, m, run)
        _drain(stack, m, run, endpoints[DRAIN]["id"])
    finally:
        for client, name in ((POSTER, LATENCY), (LIST_CLIENT, DRAIN)):
            with httpx.Client(base_url=stack.api_url, headers=bearer(client), timeout=30) as api:
                api.delete(f"/v1/webhook-endpoints/{endpoints[name]['id']}")


def _register(stack: Stack, client: str, name: str) -> dict[str, Any]:
    assert stack.receiver is not None
    with httpx.Client(base_url=stack.api_url, headers=bearer(client), timeout=30) as api:
        created = api.post(
            "/v1/webhook-endpoints",
            json={"url": f"{stack.receiver.url}/hooks/{name}", "description": f"bench {name}"},
        )
    if created.status_code != 201:
        raise RuntimeError(f"registering the {name} endpoint: {created.status_code} {created.text}")
    endpoint: dict[str, Any] = created.json()
    return endpoint


def _latency(stack: Stack, m: Measurements, run: WebhookRun) -> None:
    assert stack.receiver is not None
    arrivals: dict[str, dict[str, Any]] = {}
    busy = _Busy(stack)
    with (
        httpx.Client(base_url=stack.api_url, headers=bearer(POSTER), timeout=60) as api,
        httpx.Client(base_url=stack.receiver.url or "", timeout=60) as receiver,
    ):
        for index in range(run.tasks):
            body = {**EDIT, "prompt": f"{EDIT['prompt']} (webhook {index})"}
            created = api.post("/v1/tasks", json=body)
            created.raise_for_status()
            task_id = created.json()["id"]
            got = receiver.get(f"/_bench/wait/{LATENCY}/{task_id}/{SUCCEEDED}")
            if got.status_code != 200:
                raise RuntimeError(f"no verified {SUCCEEDED} arrived for task {task_id}")
            arrivals[task_id] = got.json()
        everything = receiver.get(f"/_bench/received/{LATENCY}").json()
    machine = busy.describe()
    with httpx.Client(base_url=stack.simulator_url, timeout=30) as sim:
        completed = {
            task_id: sim.get(f"/_sim/tasks/{arrival['provider']}").json()["callbacks"][0]["at"]
            for task_id, arrival in arrivals.items()
        }
    run.received_ms = [(arrivals[t]["at"] - completed[t]) * 1000 for t in arrivals]
    names = ("recorded", "copying", "made", "picked up", "sent", "received")
    splits: dict[str, list[float]] = {name: [] for name in names}
    for task_id, *moments in database.fetch(stack.database_url, SPLIT, {"ids": list(arrivals)}):
        if None in moments:
            continue
        times = [completed[task_id], *(float(at) for at in moments), arrivals[task_id]["at"]]
        for name, (start, end) in zip(names, pairwise(times), strict=True):
            splits[name].append((end - start) * 1000)
    kinds: dict[str, int] = {}
    for record in everything["received"]:
        kinds[record["type"]] = kinds.get(record["type"], 0) + 1
    ids = [record["id"] for record in everything["received"]]
    run.failures += sum(everything["failures"].values())
    run.duplicates += len(ids) - len(set(ids))
    pickups = splits["picked up"]
    m.notes.append(
        f"webhooks: {run.tasks} tasks created one at a time with the worker running, each"
        f" waited for until its {SUCCEEDED} arrived verified at the receiver; arrivals"
        f" {', '.join(f'{kind} {n}' for kind, n in sorted(kinds.items()))}; completion →"
        f" received p50 / p90 / p99 / max {_three(run.received_ms, 0.9)} ms; {machine}"
    )
    m.notes.append(
        "webhooks, completion → received split (p50 / p99 / max, ms): "
        + "; ".join(
            f"{label} {_three(splits[name])}"
            for name, label in (
                ("recorded", "completion → callback applied"),
                ("copying", "→ copy job started"),
                ("made", "→ image stored and message made"),
                ("picked up", "→ delivery job started (commit, NOTIFY, fetch)"),
                ("sent", "→ POST sent (lock, render, sign)"),
                ("received", "→ received (connect, send, read)"),
            )
        )
        + f"; {len(pickups)} of {len(arrivals)} messages split;"
        f" delivery jobs started more than 1 s after their message was made:"
        f" {sum(1 for value in pickups if value > 1000)}"
    )


class _Busy:
    """The cores the machine had busy over a stretch, and whose: the shared machine's
    contention is what moves these figures most."""

    def __init__(self, stack: Stack) -> None:
        children = (stack.api, stack.worker, stack.simulator, stack.receiver)
        self.pids = {child.name: child.pid for child in children if child is not None}
        self.load = os.getloadavg()[0]
        self.started = time.monotonic()
        self.before = cpu_snapshot(self.pids)
        self.postgres = postgres_cpu_by_pid()

    def describe(self) -> str:
        seconds = time.monotonic() - self.started
        cores = cpu_cores(self.before, cpu_snapshot(self.pids), seconds)
        used = postgres_cpu_by_pid()
        postgres = sum(now - self.postgres.get(pid, 0.0) for pid, now in used.items())
        cores["postgres"] = postgres / seconds
        machine = cores.pop("machine", math.nan)
        cores["harness"] = cores.pop("load generator", 0.0)  # this process
        other = machine - sum(cores.values())
        mine = ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
        return (
            f"load {self.load:.2f}→{os.getloadavg()[0]:.2f}; {machine:.2f} cores busy: {mine}"
            f" (Postgres: every backend, others' too), other users {other:.2f}"
        )


def _three(values: list[float], *also: float) -> str:
    """`p50 / p99 / max` of `values` (with the quantiles `also` after the p50)."""
    shares = (0.5, *also, 0.99)
    found = [f"{quantile(values, share):.1f}" for share in shares]
    return " / ".join([*found, f"{max(values, default=math.nan):.1f}"])


def _drain(stack: Stack, m: Measurements, run: WebhookRun, endpoint_id: str) -> None:
    assert stack.worker is not None
    assert stack.receiver is not None
    url = stack.database_url
    ids = [
        str(task_id)
        for (task_id,) in database.fetch(
            url,
            "SELECT id FROM tasks WHERE client = %(client)s AND status = 'completed'"
            " ORDER BY random() LIMIT %(n)s",
            {"client": LIST_CLIENT, "n": run.messages},
        )
    ]
    if len(ids) < run.messages:
        raise RuntimeError(f"only {len(ids)} completed tasks of {LIST_CLIENT} for the messages")
    cpu_before = cpu_seconds(stack.worker.pid) or 0.0
    busy = _Busy(stack)
    with psycopg.connect(url) as conn:
        conn.execute(DRAIN_INSERT, {"client": LIST_CLIENT, "endpoint": endpoint_id, "ids": ids})
        conn.commit()
        committed = time.time()
    deadline = time.monotonic() + 60 + run.messages / 10
    delivered = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while delivered < run.messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{delivered} of {run.messages} messages delivered in time")
            time.sleep(0.2)
            row = conn.execute(
                "SELECT count(*) FROM webhook_messages WHERE endpoint_id = %s AND status = %s",
                (endpoint_id, MessageStatus.DELIVERED.value),
            ).fetchone()
            delivered = int(row[0]) if row else 0
    cpu = (cpu_seconds(stack.worker.pid) or 0.0) - cpu_before
    machine = busy.describe()
    with httpx.Client(base_url=stack.receiver.url or "", timeout=60) as receiver:
        everything = receiver.get(f"/_bench/received/{DRAIN}").json()
    times = sorted(record["at"] for record in everything["received"])
    ids_seen = [record["id"] for record in everything["received"]]
    run.delivered = len(set(ids_seen))
    run.duplicates += len(ids_seen) - run.delivered
    run.failures += everything["failures"].get(DRAIN, 0)
    span = times[-1] - committed if times else math.nan
    run.rate = run.delivered / span if span else math.nan
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else math.nan
    first = (times[0] - committed) * 1000 if times else math.nan
    run.worker_cpu_ms = cpu / run.messages * 1000
    m.notes.append(
        f"webhooks, one worker draining: {run.messages:,} {SUCCEEDED} messages inserted with"
        f" their jobs in one transaction, {run.delivered:,} distinct ones arrived verified in"
        f" {span:.2f} s after its commit ({run.rate:.1f}/s; first {first:.0f} ms"
        f" after it, then {steady:.1f}/s from first to last); worker CPU"
        f" {run.worker_cpu_ms:.2f} ms a message ({cpu / span:.2f} of a core);"
        f" receiver: {run.failures} verification failures, {run.duplicates} duplicate arrivals;"
        f" {machine}"
    )
