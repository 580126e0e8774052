"""Callback ingest: edithook's receiver against the floor and the bound.

Each server gets a stream of `completed` callbacks, exactly as the simulator sends them
(its task object as the body, JSON content type), to valid per-task callback URLs. Every
target task is in the stream once, and a quarter of them a second time a little later
(64 to 512 positions on), so about 20 % of the requests are duplicates. edithook and the
bound each get their own targets, since a completion can be applied only once; the floor
cycles through edithook's stream, as it does nothing with it anyway.

The worker is not running meanwhile: the receivers enqueue result copies, and a worker
draining them would compete for the same two cores. `settle_leftovers` removes them after.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from app.security import callback_path, callback_token
from bench import database
from bench.loadgen import LoadResult, Mode, Spec, build_request, combine, run_load
from bench.procs import Child
from bench.report import Measurements, describe
from bench.seed import Target
from bench.stack import CALLBACK_SECRET, Stack

DUPLICATE_SHARE = 0.2
# A duplicate follows its original this many requests later: past the original's own round
# trip at 32 connections, close enough that the share is right from the start.
DUPLICATE_AFTER = (64, 512)
USER_AGENT = f"python-httpx/{httpx.__version__}"
# The floor repeats at most this many distinct requests.
FLOOR_REQUESTS = 20_000


@dataclass(frozen=True)
class IngestPlan:
    """How hard and how long to push each server."""

    concurrency: int
    duration: float
    warmup: float
    # Times the bound, edithook, edithook, bound sequence runs; each run lasts duration / 2.
    rounds: int = 1


def callback_body(target: Target) -> bytes:
    """The task object EvoLink posts when `target` completes."""
    pid = target.provider_task_id
    created = int(pid.split("-")[2])
    body = {
        "created": created,
        "id": pid,
        "model": "qwen-image-edit-plus",
        "object": "image.generation.task",
        "progress": 100,
        "status": "completed",
        "task_info": {"can_cancel": False},
        "type": "image",
        "usage": {
            "billing_rule": "per_call",
            "credits_reserved": target.results,
            "user_group": "default",
        },
        "results": [f"https://files.evolink.ai/{pid}/{i}.png" for i in range(target.results)],
    }
    return json.dumps(body).encode()


def callback_stream(targets: list[Target], rng: random.Random) -> list[Target]:
    """Every target once, in random order, and ~25 % of them again 64 to 512 places later."""
    shuffled = list(targets)
    rng.shuffle(shuffled)
    keyed: list[tuple[float, Target]] = [(float(i), t) for i, t in enumerate(shuffled)]
    repeat = DUPLICATE_SHARE / (1 - DUPLICATE_SHARE)
    keyed += [
        (i + rng.randint(DUPLICATE_AFTER[0], DUPLICATE_AFTER[1]) + 0.5, t)
        for i, t in enumerate(shuffled)
        if rng.random() < repeat
    ]
    keyed.sort(key=lambda pair: pair[0])
    return [target for _, target in keyed]


def callback_requests(stream: list[Target], host: str) -> Iterator[bytes]:
    """Raw HTTP requests for `stream`, each to its task's own callback URL."""
    for target in stream:
        task_id = uuid.UUID(target.task_id)
        path = callback_path(task_id, callback_token(CALLBACK_SECRET, task_id))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        yield build_request("POST", path, host, headers, callback_body(target))


def _run(
    stack: Stack, server: Child, requests: Iterator[bytes], plan: IngestPlan, mode: Mode
) -> LoadResult:
    spec = Spec(
        host="127.0.0.1",
        port=server.port,
        requests_file=str(stack.run_dir / "requests.bin"),
        mode=mode,
        concurrency=plan.concurrency,
        duration=plan.duration,
        warmup=plan.warmup,
        watch={server.name: server.pid},
    )
    return run_load(spec, requests)


def run_ingest(
    stack: Stack,
    measurements: Measurements,
    service_targets: list[Target],
    bound_targets: list[Target],
    plan: IngestPlan,
    rng: random.Random,
) -> None:
    """Measure floor, bound and edithook in turn; record results and notes."""
    url = stack.database_url
    service_stream = callback_stream(service_targets, rng)
    bound_stream = callback_stream(bound_targets, rng)

    floor = stack.start_app("floor")
    floor_requests = callback_requests(service_stream[:FLOOR_REQUESTS], f"127.0.0.1:{floor.port}")
    measurements.ingest["floor"] = _run(stack, floor, floor_requests, plan, "cycle")
    measurements.notes.append(f"ingest floor: {describe(measurements.ingest['floor'])}")
    stack.stop(floor)

    # Bound, edithook, edithook, bound, `rounds` times: each receiver measured in runs of half
    # the duration, in an order that cancels a drift of the machine's speed (a shared VM's
    # neighbours, the tables' growth) instead of handing it to whichever runs second.
    parts = {
        "bound": _parts(bound_stream, 2 * plan.rounds),
        "edithook": _parts(service_stream, 2 * plan.rounds),
    }
    half = IngestPlan(plan.concurrency, plan.duration / 2, plan.warmup)
    runs: dict[str, list[LoadResult]] = {"bound": [], "edithook": []}
    outcomes: dict[str, Counter[str]] = {"bound": Counter(), "edithook": Counter()}
    copy_jobs: Counter[str] = Counter()
    for name in ("bound", "edithook", "edithook", "bound") * plan.rounds:
        child = stack.start_app("bound") if name == "bound" else stack.api
        assert child is not None
        # Each run starts from the same state: the previous one's dead rows vacuumed, its
        # dirty pages written.
        database.vacuum_analyze(url, "tasks", "task_results", "task_events", "procrastinate_jobs")
        database.checkpoint(url)
        since = database.fetch(url, "SELECT clock_timestamp()")[0][0]
        stream = parts[name][len(runs[name])]
        requests = callback_requests(stream, f"127.0.0.1:{child.port}")
        runs[name].append(_run(stack, child, requests, half, "once"))
        outcomes[name].update(database.callback_outcomes(url, since))
        copy_jobs[name] += database.copy_jobs_deferred(url, since)
        if name == "bound":
            stack.stop(child)
        else:
            child.sample_memory()
    for name in ("bound", "edithook"):
        # Both must do all the work of a completion: a receiver (or a bound) that skipped
        # the copy job would be measured doing less than it claims.
        if copy_jobs[name] != outcomes[name]["applied"]:
            raise RuntimeError(
                f"{name}: {outcomes[name]['applied']} completions applied but"
                f" {copy_jobs[name]} copy jobs enqueued"
            )
        result = combine(runs[name])
        measurements.ingest[name] = result
        total = sum(outcomes[name].values())
        share = outcomes[name]["duplicate"] / total if total else 0.0
        rates = ", ".join(f"{r.throughput:,.0f}" for r in runs[name])
        measurements.notes.append(
            f"ingest {name}: {describe(result)}; req/s in its {len(runs[name])} runs {rates};"
            f" recorded callbacks by outcome {dict(outcomes[name])} ({share:.1%} duplicates),"
            f" copy jobs enqueued {copy_jobs[name]:,}"
        )


def _parts(stream: list[Target], count: int) -> list[list[Target]]:
    """`stream` cut into `count` consecutive parts of equal length (the last takes the rest)."""
    size = len(stream) // count
    return [stream[i * size : (i + 1) * size if i < count - 1 else None] for i in range(count)]
