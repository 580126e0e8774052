"""The API's own latencies: listing, one task, creating a task, and completion to stored.

Latencies here are taken one request at a time (one connection, the next request as soon
as the answer is in), so they are service times, not queueing under load.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from app.tasks.service import decode_task_cursor
from bench import database
from bench.loadgen import LoadResult, Spec, build_request, run_load
from bench.report import Measurements, describe, quantile, short_count
from bench.seed import LIST_CLIENT
from bench.stack import POSTER, Stack, bearer

# Cursors are followed this many tasks at a time to reach the deep page.
WALK_PAGE = 100
GET_SAMPLE = 1000
EDIT = {
    "prompt": "Replace the background with a snowy mountain range, keep the person unchanged",
    "image_urls": ["https://cdn.example.com/in/abc123.png"],
    "metadata": {"order_id": "bench"},
}


@dataclass(frozen=True)
class Timing:
    """Seconds measured per phase, after `warmup` seconds that do not count."""

    duration: float
    warmup: float


def _sequential(stack: Stack, requests: list[bytes], timing: Timing, name: str) -> LoadResult:
    assert stack.api is not None, "the API is not running"
    spec = Spec(
        host="127.0.0.1",
        port=stack.api.port,
        requests_file=str(stack.run_dir / f"{name}.bin"),
        mode="cycle",
        concurrency=1,
        duration=timing.duration,
        warmup=timing.warmup,
        watch={"api": stack.api.pid},
    )
    return run_load(spec, requests)


def _get(stack: Stack, path: str, client: str) -> bytes:
    host = stack.api_url.removeprefix("http://")
    return build_request("GET", path, host, bearer(client))


def walk(stack: Stack, pages: int, before: datetime) -> str | None:
    """Follow `next_cursor` for `pages` pages of WALK_PAGE tasks, starting from the page of
    tasks created before `before` (the filter repeated with each cursor, as the API asks).

    Returns the last cursor, or None when the listing ended first.
    """
    cursor: str | None = None
    params: dict[str, Any] = {"limit": WALK_PAGE, "created_before": before.isoformat()}
    with httpx.Client(base_url=stack.api_url, headers=bearer(LIST_CLIENT), timeout=60) as api:
        for _ in range(pages):
            page = api.get("/v1/tasks", params={**params, "cursor": cursor} if cursor else params)
            page.raise_for_status()
            cursor = page.json()["next_cursor"]
            if not cursor:
                return None
    return cursor


def newer_than(url: str, cursor: str) -> tuple[int, datetime]:
    """How many of the listing client's tasks come before `cursor`'s position, and its time."""
    created, task_id = decode_task_cursor(cursor)
    rows = database.fetch(
        url,
        "SELECT count(*) FROM tasks WHERE client = %(client)s"
        " AND (created_at, id) >= (%(created)s, %(id)s)",
        {"client": LIST_CLIENT, "created": created, "id": task_id},
    )
    return int(rows[0][0]), created


def run_listing(
    stack: Stack,
    m: Measurements,
    size: int,
    timing: Timing,
    walk_from: datetime,
    deep_pages: int,
    *,
    get: bool,
) -> None:
    """First page, deep page (and, with `get`, single tasks) at the current table size.

    The deep page is reached by following `deep_pages` cursors from the page of tasks
    created before `walk_from`; it is then requested with its cursor alone.
    """
    found: dict[str, LoadResult] = {}
    at = short_count(size)
    found["first"] = _sequential(stack, [_get(stack, "/v1/tasks", LIST_CLIENT)], timing, "first")
    m.notes.append(f"list first page @ {at}: {describe(found['first'])}")
    cursor = walk(stack, deep_pages, walk_from)
    if cursor:
        m.deep_cursors[size] = cursor
        newer, created = newer_than(stack.database_url, cursor)
        deep = [_get(stack, f"/v1/tasks?cursor={cursor}", LIST_CLIENT)]
        found["deep"] = _sequential(stack, deep, timing, "deep")
        m.notes.append(
            f"list deep page @ {at}: its cursor reached by following {deep_pages} cursors of"
            f" {WALK_PAGE} from {walk_from:%Y-%m-%d} (mid-history); {newer:,} of"
            f" {LIST_CLIENT}'s tasks are newer, the page starts before {created:%Y-%m-%d %H:%M};"
            f" {describe(found['deep'])}"
        )
    else:
        m.notes.append(f"list deep page @ {at}: the listing ended before {deep_pages} pages")
    if get:
        rows = database.fetch(
            stack.database_url,
            "SELECT id FROM tasks WHERE client = %(client)s ORDER BY random() LIMIT %(n)s",
            {"client": LIST_CLIENT, "n": GET_SAMPLE},
        )
        paths = [_get(stack, f"/v1/tasks/{task_id}", LIST_CLIENT) for (task_id,) in rows]
        found["get"] = _sequential(stack, paths, timing, "get")
        m.notes.append(f"get task @ {at}: {len(paths)} random tasks; {describe(found['get'])}")
    m.listing[size] = found


def run_post(stack: Stack, m: Measurements, timing: Timing) -> None:
    """POST /v1/tasks latency with no worker running; the tasks it made are deleted after."""
    host = stack.api_url.removeprefix("http://")
    headers = {**bearer(POSTER), "Content-Type": "application/json"}
    request = build_request("POST", "/v1/tasks", host, headers, json.dumps(EDIT).encode())
    m.post = _sequential(stack, [request], timing, "post")
    m.notes.append(f"POST /v1/tasks: {describe(m.post)}")
    database.execute(stack.database_url, "DELETE FROM procrastinate_jobs WHERE status = 'todo'")
    database.execute(stack.database_url, "DELETE FROM tasks WHERE client = %(c)s", {"c": POSTER})


@dataclass
class Flow:
    task_id: str
    provider_task_id: str
    stored_at: float
    served_at: float


def _one_flow(api: httpx.Client, index: int) -> Flow:
    created = api.post("/v1/tasks", json={**EDIT, "prompt": f"{EDIT['prompt']} ({index})"})
    created.raise_for_status()
    task_id = created.json()["id"]
    settled = api.get(f"/v1/tasks/{task_id}", headers={"Prefer": "wait=30"})
    stored_at = time.time()
    body = settled.json()
    if settled.headers.get("Edithook-Wait") != "settled" or not body.get("results_stored"):
        raise RuntimeError(f"task {task_id} did not settle with stored results: {body}")
    image = api.get(f"/v1/tasks/{task_id}/results/0")
    served_at = time.time()
    if image.status_code != 200 or not image.content:
        raise RuntimeError(f"result 0 of task {task_id} was not served: {image.status_code}")
    return Flow(task_id, body["provider_task_id"], stored_at, served_at)


def run_flows(stack: Stack, m: Measurements, count: int) -> None:
    """Create `count` tasks one after another with the worker running, and for each measure
    completion → stored (and served), and the worker's submit job minus the simulator's time.

    The completion moment is the simulator's first callback attempt (`callbacks[0].at`,
    sent the instant the task ends); stored is when `GET /v1/tasks/{id}` with
    `Prefer: wait=30` answers settled with every result stored; served is when result 0's
    bytes have arrived. A submit job runs from procrastinate's `started` event to its
    `succeeded` event; the simulator's own time on the create comes from `bench.sim_server`.
    """
    flows: list[Flow] = []
    with httpx.Client(base_url=stack.api_url, headers=bearer(POSTER), timeout=60) as api:
        for index in range(count):
            flows.append(_one_flow(api, index))
    with httpx.Client(base_url=stack.simulator_url, timeout=30) as sim:
        creates: dict[str, dict[str, float]] = sim.get("/_bench/create-times").json()
        completed: dict[str, float] = {}
        for flow in flows:
            record = sim.get(f"/_sim/tasks/{flow.provider_task_id}").json()
            completed[flow.task_id] = record["callbacks"][0]["at"]
    for flow in flows:
        m.stored_ms.append((flow.stored_at - completed[flow.task_id]) * 1000)
        m.served_ms.append((flow.served_at - completed[flow.task_id]) * 1000)
    # Unix times on this machine's one clock: procrastinate's events are Postgres's now() at
    # the start of the statement that wrote them; the submission event is clock_timestamp()
    # when the statement recording the create's answer inserted it.
    jobs = database.fetch(
        stack.database_url,
        "SELECT j.args->>'task_id',"
        " extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'deferred')),"
        " extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'started')),"
        " extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded')),"
        " (SELECT extract(epoch FROM min(ev.created_at)) FROM task_events AS ev"
        "   WHERE ev.task_id = (j.args->>'task_id')::uuid AND ev.kind = 'submission')"
        " FROM procrastinate_jobs AS j JOIN procrastinate_events AS e ON e.job_id = j.id"
        " WHERE j.task_name = 'submit_task' AND j.args->>'task_id' = ANY(%(ids)s)"
        " GROUP BY j.id",
        {"ids": [flow.task_id for flow in flows]},
    )
    provider_of = {flow.task_id: flow.provider_task_id for flow in flows}
    pickups: list[float] = []
    for task_id, deferred, started, succeeded, recorded in jobs:
        create = creates.get(provider_of[task_id])
        if None in (started, succeeded, recorded) or create is None:
            continue
        started, succeeded, recorded = float(started), float(succeeded), float(recorded)
        m.submit_overhead_ms.append((succeeded - started - create["seconds"]) * 1000)
        for phase, seconds in (
            ("before", create["received"] - started),
            ("after", recorded - create["received"] - create["seconds"]),
            ("record", succeeded - recorded),
        ):
            m.submit_phases_ms.setdefault(phase, []).append(seconds * 1000)
        if deferred is not None:
            pickups.append((started - float(deferred)) * 1000)
    sims = [creates[flow.provider_task_id]["seconds"] * 1000 for flow in flows]
    m.notes.append(
        f"flows: {count} tasks created one at a time with the worker running;"
        f" simulator's own create time p50 {quantile(sims, 0.5):.2f} ms;"
        f" POST → submit job started (queue pick-up) p50 {quantile(pickups, 0.5):.2f} ms"
    )
    p50 = {name: quantile(values, 0.5) for name, values in m.submit_phases_ms.items()}
    before, after, finish = (p50.get(name, math.nan) for name in ("before", "after", "record"))
    m.notes.append(
        "submit job phases, p50: from procrastinate's `started` to the create reaching the"
        f" simulator (the job fetched, the claim, the request sent) {before:.2f} ms;"
        " from the simulator's answer to the record's event insert (the answer read, parsed"
        f" and judged) {after:.2f} ms; from there to procrastinate's `succeeded` (the"
        f" record's commit, the job finished) {finish:.2f} ms"
    )
