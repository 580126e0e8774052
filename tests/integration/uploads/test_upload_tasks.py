"""Tasks that name uploads in `image_ids`, end to end: the simulator fetches each input over
real HTTP, an upload through the signed link edithook made at submission."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from app import links
from tests.conftest import Service
from tests.helpers import CALLBACK_SECRET, events, own_task_ids, provider_tasks, wait_for_task
from tests.images import encoded

PROBLEM = "tag:edithook,2026:problem/"
SAMPLE_URL = "https://cdn.example.com/in/first-800x600.png"


async def upload(api: httpx.AsyncClient, data: bytes, content_type: str = "image/png") -> str:
    response = await api.post("/v1/uploads", content=data, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    upload_id: str = response.json()["id"]
    return upload_id


async def create(api: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await api.post("/v1/tasks", json={"prompt": "make it snow", **body})


async def record_of(sim: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    (record,) = await provider_tasks(sim, {task_id})
    return record


async def test_an_upload_is_fetched_through_its_signed_link_and_the_task_completes(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, service: Service
) -> None:
    """image_urls first, then image_ids, as EvoLink receives them; the simulator fetched the
    upload from edithook's signed link and got its very bytes."""
    data = encoded("WEBP", 700, 500)
    upload_id = await upload(api, data, "image/webp")
    response = await create(api, image_urls=[SAMPLE_URL], image_ids=[upload_id])
    assert response.status_code == 202, response.text
    task = response.json()
    assert task["request"]["image_ids"] == [upload_id]
    assert task["request"]["image_urls"] == [SAMPLE_URL]

    done = await wait_for_task(api, task["id"], {"completed", "failed"}, within=30)
    assert done["status"] == "completed", done["error"]
    record = await record_of(sim, task["id"])
    sent = record["request"]["image_urls"]
    assert sent[0] == SAMPLE_URL
    link = urlsplit(sent[1])
    assert f"{link.scheme}://{link.netloc}" == service.url
    assert link.path == f"/v1/uploads/{upload_id}/content.webp"
    query = parse_qs(link.query)
    expires = int(query["expires"][0])
    # Valid for the TTL from submission (a day by default), not from the upload.
    assert time.time() + 86_400 - 120 < expires <= time.time() + 86_400
    first, second = record["inputs"]
    assert first["fetched_url"].endswith("/inputs/in/first-800x600.png")
    assert (first["width"], first["height"], first["code"]) == (800, 600, None)
    assert second["fetched_url"] == sent[1]
    assert second["status_code"] == 200
    assert second["content_type"] == "image/webp"
    assert (second["size_bytes"], second["width"], second["height"]) == (len(data), 700, 500)
    assert second["code"] is None

    # The link serves the bytes themselves, to anyone holding it, without a key.
    async with httpx.AsyncClient() as anonymous:
        fetched = await anonymous.get(sent[1])
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).digest() == hashlib.sha256(data).digest()
    assert fetched.headers["content-type"] == "image/webp"


async def test_uploads_alone_are_enough_and_keep_their_order(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """Without image_urls, the uploads are the inputs, in the order named."""
    first = await upload(api, encoded("PNG", 400, 400))
    second = await upload(api, encoded("JPEG", 500, 500), "image/jpeg")
    response = await create(api, image_ids=[second, first])
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    done = await wait_for_task(api, task_id, {"completed", "failed"}, within=30)
    assert done["status"] == "completed", done["error"]
    sent = (await record_of(sim, task_id))["request"]["image_urls"]
    assert [urlsplit(url).path for url in sent] == [
        f"/v1/uploads/{second}/content.jpg",
        f"/v1/uploads/{first}/content.png",
    ]


async def test_another_clients_upload_is_refused_naming_it_and_nothing_is_stored(
    api: httpx.AsyncClient, beta_api: httpx.AsyncClient
) -> None:
    """An upload is usable by its own client only: 422 naming the id, and no task made."""
    own = await upload(api, encoded())
    theirs = await upload(beta_api, encoded())
    response = await create(api, image_urls=[SAMPLE_URL], image_ids=[own, theirs])
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == PROBLEM + "validation-error"
    assert theirs in body["detail"]
    assert own not in body["detail"]
    assert [error["field"] for error in body["errors"]] == ["image_ids[1]"]
    assert theirs in body["errors"][0]["message"]
    assert await own_task_ids(api) == set()


async def test_an_unknown_upload_id_is_refused(api: httpx.AsyncClient) -> None:
    """An id that names no upload is 422 naming it; a malformed one names its field."""
    unknown = str(uuid.uuid4())
    response = await create(api, image_ids=[unknown])
    assert response.status_code == 422, response.text
    assert unknown in response.json()["detail"]
    malformed = await create(api, image_ids=["not-an-id"])
    assert malformed.status_code == 422
    assert [error["field"] for error in malformed.json()["errors"]] == ["image_ids[0]"]


async def test_one_to_three_images_in_all(api: httpx.AsyncClient) -> None:
    """No image at all, or more than three between the two lists, is 422 on image_urls."""
    ids = [await upload(api, encoded()) for _ in range(2)]
    none = await create(api)
    assert none.status_code == 422
    assert [error["field"] for error in none.json()["errors"]] == ["image_urls"]
    four = await create(api, image_urls=[SAMPLE_URL, SAMPLE_URL], image_ids=ids)
    assert four.status_code == 422
    assert [error["field"] for error in four.json()["errors"]] == ["image_urls"]
    assert "at most 3" in four.json()["errors"][0]["message"]


async def test_an_upload_past_its_retention_is_refused_at_create(
    api: httpx.AsyncClient, service: Service
) -> None:
    """Once its `expires_at` has passed, an upload cannot be named, even before it is pruned."""
    upload_id = await upload(api, encoded())
    async with service.resources.pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s",
            (uuid.UUID(upload_id),),
        )
    response = await create(api, image_ids=[upload_id])
    assert response.status_code == 422, response.text
    assert upload_id in response.json()["detail"]


async def test_an_input_the_simulator_cannot_fetch_fails_the_task(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """A 404 at the image URL fails the task as EvoLink does: image_processing_error."""
    missing = "https://cdn.example.com/in/missing.png"
    response = await create(api, image_urls=[missing])
    task_id = response.json()["id"]
    done = await wait_for_task(api, task_id, {"completed", "failed"}, within=30)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "image_processing_error"
    assert "HTTP 404" in done["error"]["message"]
    (fetched,) = (await record_of(sim, task_id))["inputs"]
    assert (fetched["status_code"], fetched["code"]) == (404, "image_processing_error")


async def test_an_upload_gone_before_submission_fails_the_task_unsent(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, service: Service
) -> None:
    """A task requeued (EvoLink said 429) whose upload is deleted meanwhile fails with
    `input_unavailable` at its next attempt, and nothing more is sent to EvoLink."""
    upload_id = await upload(api, encoded())
    await sim.post("/_sim/faults", json={"endpoint": "create", "status": 429, "retry_after": 2})
    before = (await sim.get("/_sim/stats")).json()["create_requests"]
    task_id = (await create(api, image_ids=[upload_id])).json()["id"]
    deadline = time.monotonic() + 15
    while not [e for e in await events(api, task_id) if e["outcome"] == "error"]:
        assert time.monotonic() < deadline, "the 429 was never recorded"
        await asyncio.sleep(0.05)
    async with service.resources.pool.connection() as conn:
        await conn.execute("DELETE FROM uploads WHERE id = %s", (uuid.UUID(upload_id),))
    done = await wait_for_task(api, task_id, {"completed", "failed"}, within=30)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "input_unavailable"
    assert upload_id in done["error"]["message"]
    assert done["resolved_by"] == "system"
    assert (await sim.get("/_sim/stats")).json()["create_requests"] == before + 1


def _signed(upload_id: str, extension: str, expires: int) -> str:
    key = links.link_key(CALLBACK_SECRET)
    return links.sign(key, f"/v1/uploads/{upload_id}/content.{extension}", expires)


async def test_the_content_link_needs_a_valid_unexpired_signature(
    api: httpx.AsyncClient, service: Service
) -> None:
    """Without a key: a valid link serves the bytes; a tampered, missing or expired one is
    403 naming which; a link for another path or extension serves nothing."""
    data = encoded("PNG", 450, 450)
    upload_id = await upload(api, data)
    valid = _signed(upload_id, "png", int(time.time()) + 300)
    async with httpx.AsyncClient(base_url=service.url) as anonymous:
        ok = await anonymous.get(valid)
        assert ok.status_code == 200
        assert ok.content == data
        assert ok.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'

        tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
        refused = await anonymous.get(tampered)
        assert refused.status_code == 403
        assert refused.json()["type"] == PROBLEM + "link-invalid"

        bare = await anonymous.get(f"/v1/uploads/{upload_id}/content.png")
        assert bare.json()["type"] == PROBLEM + "link-invalid"

        later = valid.replace("expires=", "expires=9")  # a longer life, same signature
        assert (await anonymous.get(later)).json()["type"] == PROBLEM + "link-invalid"

        expired = await anonymous.get(_signed(upload_id, "png", int(time.time()) - 1))
        assert expired.status_code == 403
        assert expired.json()["type"] == PROBLEM + "link-expired"

        other_upload = _signed(str(uuid.uuid4()), "png", int(time.time()) + 300)
        assert (await anonymous.get(other_upload)).status_code == 410
        wrong_extension = _signed(upload_id, "jpg", int(time.time()) + 300)
        assert (await anonymous.get(wrong_extension)).status_code == 410
