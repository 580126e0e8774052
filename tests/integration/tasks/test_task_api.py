"""The REST API end to end: over real HTTP, with the simulator as EvoLink."""

from __future__ import annotations

import asyncio
import io

import httpx
from PIL import Image

from tests.helpers import (
    VALID_EDIT,
    create_task,
    events,
    own_task_ids,
    provider_tasks,
    wait_for_task,
)


async def test_a_task_completes_and_its_images_are_stored(api: httpx.AsyncClient) -> None:
    """Create → submitted → callback completes it → images copied, listed and served."""
    response = await api.post(
        "/v1/tasks", json={**VALID_EDIT, "n": 2, "metadata": {"k": "v"}, "seed": 7}
    )
    assert response.status_code == 202
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["status"] == "queued"
    assert task["metadata"] == {"k": "v"}
    assert task["request"]["n"] == 2

    waited = await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=30"})
    assert waited.headers["preference-applied"] == "wait=30"
    assert waited.headers["edithook-wait"] == "settled"
    done = waited.json()
    assert done["status"] == "completed"
    assert done["provider_task_id"].startswith("task-unified-")
    assert done["progress"] == 100
    assert done["resolved_by"] == "callback"
    assert (done["result_count"], done["results_stored"]) == (2, True)

    results = (await api.get(f"/v1/tasks/{task['id']}/results")).json()
    assert results["all_stored"] is True
    assert [item["index"] for item in results["items"]] == [0, 1]
    first = results["items"][0]
    image = await api.get(f"/v1/tasks/{task['id']}/results/0")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (first["width"], first["height"])

    history = await events(api, task["id"])
    moves = [(e["kind"], e["from_status"], e["to_status"]) for e in history if e["to_status"]]
    assert moves == [
        ("created", None, "queued"),
        ("submission", "submitting", "pending"),
        ("callback", "pending", "completed"),
    ]
    callback = next(e for e in history if e["kind"] == "callback")
    assert '"status":"completed"' in callback["body"].replace(" ", "")
    assert callback["headers"]["content-type"].startswith("application/json")


async def test_the_same_idempotency_key_and_body_return_the_same_task(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """A retried create returns the first task and submits nothing more."""
    headers = {"Idempotency-Key": "order-77"}
    first = await api.post("/v1/tasks", json=VALID_EDIT, headers=headers)
    await wait_for_task(api, first.json()["id"], {"completed"})
    second = await api.post("/v1/tasks", json=VALID_EDIT, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(await provider_tasks(sim, await own_task_ids(api))) == 1


async def test_concurrent_creates_with_one_key_make_one_task(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """Five simultaneous creates with one key: one task, one submission."""
    responses = await asyncio.gather(
        *[
            api.post("/v1/tasks", json=VALID_EDIT, headers={"Idempotency-Key": "k1"})
            for _ in range(5)
        ]
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    await wait_for_task(api, responses[0].json()["id"], {"completed"})
    assert len(await provider_tasks(sim, await own_task_ids(api))) == 1


async def test_the_same_key_with_another_body_is_a_conflict(api: httpx.AsyncClient) -> None:
    """Reusing a key for a different request is refused with 409."""
    headers = {"Idempotency-Key": "order-78"}
    assert (await api.post("/v1/tasks", json=VALID_EDIT, headers=headers)).status_code == 202
    other = await api.post("/v1/tasks", json={**VALID_EDIT, "prompt": "other"}, headers=headers)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"


async def test_keys_are_per_client(api: httpx.AsyncClient, beta_api: httpx.AsyncClient) -> None:
    """Two clients using the same key string get two tasks."""
    headers = {"Idempotency-Key": "shared"}
    a = await api.post("/v1/tasks", json=VALID_EDIT, headers=headers)
    b = await beta_api.post("/v1/tasks", json=VALID_EDIT, headers=headers)
    assert a.json()["id"] != b.json()["id"]


async def test_requests_without_a_valid_key_are_refused(service_url: str) -> None:
    """No key, a wrong key, or another scheme: 401 with a Bearer challenge."""
    async with httpx.AsyncClient(base_url=service_url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
            response = await anonymous.get("/v1/tasks", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.headers["content-type"] == "application/problem+json"


async def test_a_client_cannot_see_another_clients_tasks(
    api: httpx.AsyncClient, beta_api: httpx.AsyncClient
) -> None:
    """Another client's task is a 404 everywhere, and absent from listings."""
    task = await create_task(api)
    for path in ("", "/results", "/events"):
        response = await beta_api.get(f"/v1/tasks/{task['id']}{path}")
        assert response.status_code == 404, path
    assert (await beta_api.get("/v1/tasks")).json()["items"] == []
    assert (await api.get(f"/v1/tasks/{task['id']}")).status_code == 200


async def test_unknown_and_malformed_task_ids_are_404(api: httpx.AsyncClient) -> None:
    """Ids that do not exist or cannot exist answer 404 problems."""
    for task_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await api.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 404
        assert response.json()["status"] == 404


async def test_failed_task_carries_the_providers_reason(api: httpx.AsyncClient) -> None:
    """A provider failure ends the task failed with its code and message."""
    task = await create_task(api, prompt="a celebrity [sim:fail=content_policy_violation]")
    done = await wait_for_task(api, task["id"], {"failed"})
    assert done["error"]["code"] == "content_policy_violation"
    assert done["error"]["message"]
    assert done["result_count"] == 0


async def test_both_forms_of_cancellation_end_cancelled(api: httpx.AsyncClient) -> None:
    """`status: cancelled` and `failed` + `request_cancelled` both become `cancelled`."""
    plain = await create_task(api, prompt="x [sim:cancel]")
    as_failed = await create_task(api, prompt="x [sim:cancel-as-failed]")
    assert (await wait_for_task(api, plain["id"], {"cancelled", "failed"}))["status"] == "cancelled"
    second = await wait_for_task(api, as_failed["id"], {"cancelled", "failed"})
    assert second["status"] == "cancelled"
    assert second["error"]["code"] == "request_cancelled"


async def test_the_openapi_document_describes_the_api(api: httpx.AsyncClient) -> None:
    """The OpenAPI document lists every route, with examples of the main shapes."""
    document = (await api.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/results",
        "/v1/tasks/{task_id}/events",
        "/v1/callbacks/evolink/{task_id}/{token}",
    ):
        assert path in paths
    schemas = document["components"]["schemas"]
    for name in ("TaskCreate", "TaskRead", "ResultRead", "EventRead"):
        assert schemas[name]["examples"], name
    for path in ("/v1/tasks/{task_id}/refresh", "/v1/tasks/{task_id}/results/{index}", "/metrics"):
        assert path in paths


async def test_waiting_on_a_settled_task_says_the_preference_was_honoured(
    api: httpx.AsyncClient,
) -> None:
    """`Prefer: wait` on a task already settled answers at once, with the same headers as a wait."""
    task = await create_task(api)
    first = await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=30"})
    assert first.headers["Edithook-Wait"] == "settled"
    again = await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=30"})
    assert again.json()["status"] == "completed"
    assert again.headers["Preference-Applied"] == "wait=30"
    assert again.headers["Edithook-Wait"] == "settled"
