"""The callback receiver: idempotent, monotonic, and closed to strangers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.callbacks.bodies import original_body
from app.security import callback_path, callback_token
from tests.helpers import CALLBACK_SECRET, create_task, events, wait_for_task


def url_for(task_id: str) -> str:
    parsed = uuid.UUID(task_id)
    return callback_path(parsed, callback_token(CALLBACK_SECRET, parsed))


def completed(provider_id: str, n: int = 1) -> dict[str, Any]:
    return {
        "id": provider_id,
        "object": "image.generation.task",
        "status": "completed",
        "progress": 100,
        "results": [f"https://files.example/{provider_id}/{i}.png" for i in range(n)],
        "usage": {"credits_reserved": 2},
    }


@pytest.fixture
async def held(api: httpx.AsyncClient) -> dict[str, Any]:
    """A submitted task of n = 2 the simulator keeps processing until told otherwise."""
    task = await create_task(api, prompt="hold it [sim:hold]", n=2)
    return await wait_for_task(api, task["id"], {"pending", "processing"})


async def test_three_identical_concurrent_deliveries_make_one_transition(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """Three copies at once: one applied, two duplicates, one set of results."""
    body = completed(held["provider_task_id"], n=2)
    responses = await asyncio.gather(*[api.post(url_for(held["id"]), json=body) for _ in range(3)])
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(r.json()["outcome"] for r in responses) == ["applied", "duplicate", "duplicate"]
    task = (await api.get(f"/v1/tasks/{held['id']}")).json()
    assert task["status"] == "completed"
    assert task["result_count"] == 2
    callbacks = [e for e in await events(api, held["id"]) if e["kind"] == "callback"]
    assert [e["to_status"] for e in callbacks].count("completed") == 1
    assert len(callbacks) == 3


async def test_a_late_processing_never_undoes_completed(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """`processing` after `completed` is recorded as stale and changes nothing."""
    url = url_for(held["id"])
    assert (await api.post(url, json=completed(held["provider_task_id"]))).json()[
        "outcome"
    ] == "applied"
    late = {"id": held["provider_task_id"], "status": "processing", "progress": 40}
    response = await api.post(url, json=late)
    assert response.status_code == 200
    assert response.json()["outcome"] == "stale"
    task = (await api.get(f"/v1/tasks/{held['id']}")).json()
    assert (task["status"], task["progress"]) == ("completed", 100)


async def test_a_conflicting_terminal_message_is_an_anomaly(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """`failed` after `completed` is kept as an anomaly event; the task stays completed."""
    url = url_for(held["id"])
    await api.post(url, json=completed(held["provider_task_id"]))
    failed = {
        "id": held["provider_task_id"],
        "status": "failed",
        "error": {"code": "service_error", "message": "boom"},
    }
    response = await api.post(url, json=failed)
    assert (response.status_code, response.json()["outcome"]) == (200, "anomaly")
    task = (await api.get(f"/v1/tasks/{held['id']}")).json()
    assert task["status"] == "completed"
    assert task["error"] is None
    history = await events(api, held["id"])
    anomaly = [e for e in history if e["kind"] == "callback" and e["outcome"] == "anomaly"]
    assert len(anomaly) == 1
    assert "service_error" in anomaly[0]["body"]


async def test_a_callback_for_another_provider_task_is_an_anomaly(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """A body naming a different provider task does not move ours."""
    response = await api.post(url_for(held["id"]), json=completed("task-unified-1-someoneelse"))
    assert response.json()["outcome"] == "anomaly"
    assert (await api.get(f"/v1/tasks/{held['id']}")).json()["status"] == "pending"


async def test_an_unknown_provider_status_is_an_anomaly(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """A status outside the contract is kept and not applied."""
    body = {"id": held["provider_task_id"], "status": "teleported"}
    response = await api.post(url_for(held["id"]), json=body)
    assert (response.status_code, response.json()["outcome"]) == (200, "anomaly")


async def test_the_simulators_real_callback_then_a_replay(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """The provider's own delivery applies; replaying its exact body is a duplicate."""
    await sim.post(f"/_sim/tasks/{held['provider_task_id']}/complete")
    await wait_for_task(api, held["id"], {"completed"})
    record = (await sim.get(f"/_sim/tasks/{held['provider_task_id']}")).json()
    assert [d["status_code"] for d in record["callbacks"]] == [200]
    first = next(e for e in await events(api, held["id"]) if e["kind"] == "callback")
    replay = await api.post(
        url_for(held["id"]), content=first["body"], headers={"Content-Type": "application/json"}
    )
    assert replay.json()["outcome"] == "duplicate"


@pytest.mark.parametrize(
    ("path_of", "why"),
    [
        (lambda t: url_for(t)[:-1] + ("A" if url_for(t)[-1] != "A" else "B"), "wrong token"),
        (lambda t: url_for(str(uuid.uuid4())), "unknown task with its own valid token"),
        (lambda t: f"/v1/callbacks/evolink/{t}/", "empty token"),
        (lambda t: "/v1/callbacks/evolink/not-a-uuid/abc", "malformed task id"),
        (lambda t: url_for(t).replace(t, str(uuid.uuid4())), "token of another task"),
    ],
)
async def test_strangers_get_a_bare_404(
    api: httpx.AsyncClient, held: dict[str, Any], path_of: Any, why: str
) -> None:
    """Wrong token or unknown task: 404 with nothing that says which, and nothing recorded."""
    before = len(await events(api, held["id"]))
    response = await api.post(path_of(held["id"]), json=completed(held["provider_task_id"]))
    assert response.status_code == 404, why
    assert "detail" not in response.json()
    assert len(await events(api, held["id"])) == before
    assert (await api.get(f"/v1/tasks/{held['id']}")).json()["status"] == "pending"


async def test_a_trailing_slash_is_not_redirected(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """The receiver never answers with a redirect, which would lose a POST."""
    response = await api.post(url_for(held["id"]) + "/", json={})
    assert response.status_code == 404


async def test_an_oversize_body_is_413_and_recorded(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """A body over 1 MiB is refused with 413; the attempt shows in the events."""
    body = b'{"id": "' + b"x" * (1024 * 1024) + b'"}'
    response = await api.post(url_for(held["id"]), content=body)
    assert response.status_code == 413
    rejected = [e for e in await events(api, held["id"]) if e["outcome"] == "rejected"]
    assert len(rejected) == 1
    assert "over the limit" in rejected[0]["detail"]


async def test_an_oversize_chunked_body_is_413(
    api: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """Without a Content-Length, the limit still holds while reading."""

    async def chunks() -> Any:
        for _ in range(20):
            yield b"y" * 65536

    response = await api.post(url_for(held["id"]), content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"status": "completed"}', b'{"id": 5, "status": []}', b"\xff\xfe"],
)
async def test_a_malformed_body_is_400_and_recorded(
    api: httpx.AsyncClient, held: dict[str, Any], body: bytes
) -> None:
    """Unreadable bodies are refused with 400, kept as rejected events, and move nothing."""
    response = await api.post(
        url_for(held["id"]), content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    rejected = [e for e in await events(api, held["id"]) if e["outcome"] == "rejected"]
    assert len(rejected) == 1
    assert rejected[0]["body"] is not None
    assert (await api.get(f"/v1/tasks/{held['id']}")).json()["status"] == "pending"


def hostile_completed(provider_id: str, **fields: bytes) -> bytes:
    """A completed callback for `provider_id` with each of `fields` spliced in as raw JSON."""
    extra = b"".join(b', "' + name.encode() + b'": ' + value for name, value in fields.items())
    return (
        b'{"id": "' + provider_id.encode() + b'", "status": "completed", "progress": 100, '
        b'"results": ["https://files.example/r/0.png"]' + extra + b"}"
    )


# (case, body for the held task's provider id, status, outcome)
HOSTILE: list[tuple[str, Any, int, str]] = [
    ("nesting 500,000 deep", lambda p: b"[" * 500_000 + b"]" * 500_000, 400, "rejected"),
    (
        "an integer of 5,000 digits",
        lambda p: hostile_completed(p, created=b"9" * 5000),
        400,
        "rejected",
    ),
    ("NaN", lambda p: hostile_completed(p, usage=b'{"credits": NaN}'), 400, "rejected"),
    ("Infinity", lambda p: hostile_completed(p, usage=b'{"credits": 1e999}'), 200, "applied"),
    (
        "NUL in an unimportant field",
        lambda p: hostile_completed(p, usage=b'{"user_group": "a\\u0000b", "k\\u0000": 1}'),
        200,
        "applied",
    ),
    (
        "NUL in the status",
        lambda p: hostile_completed(p).replace(b'"completed"', b'"complet\\u0000ed"'),
        200,
        "anomaly",
    ),
    (
        "a lone surrogate",
        lambda p: hostile_completed(p, usage=b'{"user_group": "\\ud800"}'),
        400,
        "rejected",
    ),
    ("non-JSON bytes containing NUL", lambda p: b"\x00\x01\xff\xfe{\x00}", 400, "rejected"),
    (
        "an integer of 4,000 digits in fields we keep",
        lambda p: hostile_completed(
            p,
            usage=b'{"credits": ' + b"7" * 4000 + b"}",
            task_info=b'{"estimated_time": ' + b"8" * 4000 + b"}",
        ),
        200,
        "applied",
    ),
]


@pytest.mark.parametrize(
    ("body_for", "status", "outcome"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
async def test_a_hostile_body_with_a_valid_token_is_recorded_and_answered_the_same_twice(
    api: httpx.AsyncClient, held: dict[str, Any], body_for: Any, status: int, outcome: str
) -> None:
    """Every delivery with a valid token is recorded: 400 when unreadable, 2xx when applied."""
    body: bytes = body_for(held["provider_task_id"])
    url = url_for(held["id"])
    headers = {"Content-Type": "application/json"}
    answers = [await api.post(url, content=body, headers=headers) for _ in range(2)]
    assert [a.status_code for a in answers] == [status, status], answers[0].text
    recorded = [e for e in await events(api, held["id"]) if e["kind"] == "callback"]
    assert len(recorded) == 2
    assert recorded[0]["outcome"] == outcome
    assert all(event["body"] is not None for event in recorded)
    assert original_body(recorded[0]["body"]) == body
    task = (await api.get(f"/v1/tasks/{held['id']}")).json()
    assert task["status"] == ("completed" if outcome == "applied" else "pending")


async def test_more_results_than_the_task_asked_for_are_an_anomaly_without_rows(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, held: dict[str, Any]
) -> None:
    """20,000 URLs for a task of n = 2: recorded as an anomaly, no result rows, no move; the
    provider's own completion then settles the task."""
    body = completed(held["provider_task_id"])
    body["results"] = [f"https://f.example/{i}.png" for i in range(20_000)]
    response = await api.post(url_for(held["id"]), json=body)
    assert (response.status_code, response.json()["outcome"]) == (200, "anomaly")
    task = (await api.get(f"/v1/tasks/{held['id']}")).json()
    assert (task["status"], task["result_count"]) == (held["status"], 0)
    assert (await api.get(f"/v1/tasks/{held['id']}/results")).json()["items"] == []
    anomaly = next(e for e in await events(api, held["id"]) if e["outcome"] == "anomaly")
    assert "20000 results" in anomaly["detail"]
    assert "asked for at most 2" in anomaly["detail"]

    await sim.post(f"/_sim/tasks/{held['provider_task_id']}/complete")
    done = await wait_for_task(api, held["id"], {"completed"})
    assert (done["resolved_by"], done["result_count"]) == ("callback", 2)
