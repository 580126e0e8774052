"""`POST /v1/images/edits` driven by OpenAI's own SDK and by a bare multipart request, against
the running service, its worker and the simulator (which fetches the uploaded inputs)."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import openai
import pytest

from app.links import link_key, sign
from app.results.links import content_path
from tests.helpers import CALLBACK_SECRET, events, own_task_ids, provider_tasks
from tests.integration.openai.conftest import (
    SHORT_WAIT_SECONDS,
    SMALL_UPLOAD_BYTES,
    jpeg,
    noise_png,
    png,
    sdk,
)

if TYPE_CHECKING:
    from app.servers import RunningServer
    from tests.conftest import Caller, Service

MODEL = "qwen-image-edit-plus"
PROMPT = "Replace the background with a snowy mountain range"


async def stored_image(api: httpx.AsyncClient, task_id: str, index: int) -> bytes:
    """The result's bytes as the keyed REST API serves them."""
    answer = await api.get(f"/v1/tasks/{task_id}/results/{index}")
    assert answer.status_code == 200, answer.text
    return answer.content


async def test_the_sdk_answers_a_url_that_serves_the_stored_image_without_a_key(
    client: openai.AsyncOpenAI, api: httpx.AsyncClient, caller: Caller
) -> None:
    """`response_format="url"`: a signed link that needs no key to the stored image; the task
    is an ordinary one, listed with its events, and `user` is in its metadata."""
    raw = await client.images.with_raw_response.edit(
        model=MODEL,
        image=("photo.png", png(), "image/png"),
        prompt=PROMPT,
        response_format="url",
        user="end-user-42",
    )
    task_id = raw.headers["edithook-task-id"]
    result = raw.parse()
    assert result.data is not None
    assert len(result.data) == 1
    url = result.data[0].url
    assert url is not None
    assert result.data[0].b64_json is None
    async with httpx.AsyncClient(timeout=30) as anonymous:  # no Authorization header
        fetched = await anonymous.get(url)
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == await stored_image(api, task_id, 0)

    assert task_id in await own_task_ids(api)
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["status"] == "completed"
    assert task["metadata"] == {"user": "end-user-42"}
    created_at = datetime.fromisoformat(task["created_at"].replace("Z", "+00:00"))
    assert result.created == int(created_at.timestamp())
    kinds = [event["kind"] for event in await events(api, task_id)]
    assert kinds[0] == "created"
    assert "submission" in kinds


async def test_the_sdk_answers_base64_of_the_stored_images(
    client: openai.AsyncOpenAI, api: httpx.AsyncClient
) -> None:
    """`response_format="b64_json"` with n = 2: each decodes to the image edithook stored."""
    raw = await client.images.with_raw_response.edit(
        model=MODEL,
        image=("photo.jpg", jpeg(), "image/jpeg"),
        prompt=PROMPT,
        n=2,
        response_format="b64_json",
    )
    task_id = raw.headers["edithook-task-id"]
    result = raw.parse()
    assert result.data is not None
    assert [item.url for item in result.data] == [None, None]
    for index, item in enumerate(result.data):
        assert item.b64_json is not None
        assert base64.b64decode(item.b64_json) == await stored_image(api, task_id, index)


async def test_one_to_three_images_are_sent_in_order_as_an_array_or_one_field(
    client: openai.AsyncOpenAI, api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """Three images (`image[]`, as the SDK sends a list) reach EvoLink in order; one image
    without `model` works; four are refused naming `image`."""
    sizes = [(400, 400), (512, 640), (800, 600)]
    images = [(f"in-{i}.png", png(w, h), "image/png") for i, (w, h) in enumerate(sizes)]
    raw = await client.images.with_raw_response.edit(image=images, prompt=PROMPT)
    task_id = raw.headers["edithook-task-id"]
    assert raw.parse().data is not None
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    upload_ids = task["request"]["image_ids"]
    assert len(upload_ids) == 3
    [record] = await provider_tasks(sim, {task_id})
    sent = record["request"]["image_urls"]
    assert [urlsplit(url).path.split("/")[3] for url in sent] == upload_ids
    for upload_id, (width, height) in zip(upload_ids, sizes, strict=True):
        upload = (await api.get(f"/v1/uploads/{upload_id}")).json()
        assert (upload["width"], upload["height"]) == (width, height)

    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.edit(image=[*images, images[0]], prompt=PROMPT)
    assert refused.value.status_code == 400
    assert refused.value.param == "image"


async def test_refusals_are_openai_errors_the_sdk_raises_by_status(
    client: openai.AsyncOpenAI, service: Service, api: httpx.AsyncClient
) -> None:
    """Another model, an unusable image or size, a wrong key: OpenAI's error shape and codes,
    raised as the SDK's BadRequestError and AuthenticationError; nothing is created."""
    before = await own_task_ids(api)
    image = ("photo.png", png(), "image/png")
    with pytest.raises(openai.BadRequestError) as model:
        await client.images.edit(model="dall-e-2", image=image, prompt=PROMPT)
    assert (model.value.param, model.value.code, model.value.type) == (
        "model",
        "invalid_value",
        "invalid_request_error",
    )
    with pytest.raises(openai.BadRequestError) as size:
        await client.images.edit(model=MODEL, image=image, prompt=PROMPT, size="256x256")
    assert size.value.param == "size"
    with pytest.raises(openai.BadRequestError) as tiny:
        await client.images.edit(image=("tiny.png", png(64, 64), "image/png"), prompt=PROMPT)
    assert tiny.value.param == "image"
    with pytest.raises(openai.BadRequestError) as text:
        await client.images.edit(image=("a.png", b"not an image", "image/png"), prompt=PROMPT)
    assert text.value.param == "image"
    with pytest.raises(openai.BadRequestError) as masked:
        await client.images.edit(image=image, prompt=PROMPT, mask=("m.png", png(), "image/png"))
    assert (masked.value.param, masked.value.code) == ("mask", "unknown_parameter")

    async with sdk(service.url, "not-a-key-of-anyone") as stranger:
        with pytest.raises(openai.AuthenticationError) as unknown:
            await stranger.images.edit(image=image, prompt=PROMPT)
    assert unknown.value.status_code == 401
    assert unknown.value.code == "invalid_api_key"
    assert await own_task_ids(api) == before


async def test_a_content_policy_refusal_is_a_400_naming_the_task(
    client: openai.AsyncOpenAI, api: httpx.AsyncClient
) -> None:
    """A task EvoLink fails with `content_policy_violation` answers 400 with that code, the
    message and the header naming the task, which ended failed."""
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.edit(
            image=("photo.png", png(), "image/png"),
            prompt=f"{PROMPT} [sim:fail=content_policy_violation]",
        )
    error = refused.value
    assert (error.code, error.type) == ("content_policy_violation", "invalid_request_error")
    task_id = error.response.headers["edithook-task-id"]
    assert task_id in error.message
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["status"] == "failed"
    assert task["error"]["code"] == "content_policy_violation"


async def test_a_task_that_fails_otherwise_is_a_500_naming_it(
    client: openai.AsyncOpenAI,
) -> None:
    """A provider-side failure is OpenAI's 500 `server_error`, with the task's code."""
    with pytest.raises(openai.InternalServerError) as failed:
        await client.images.edit(
            image=("photo.png", png(), "image/png"),
            prompt=f"{PROMPT} [sim:fail=service_error]",
        )
    error = failed.value
    assert (error.status_code, error.type, error.code) == (500, "server_error", "service_error")
    assert error.response.headers["edithook-task-id"] in error.message


async def test_a_task_evolink_cancelled_is_a_500_the_sdk_does_not_retry(
    service: Service, caller: Caller, api: httpx.AsyncClient
) -> None:
    """A cancelled task answers 500 `server_error` naming it, with `x-should-retry: false`:
    the SDK, retries on, sends the edit once."""
    before = await own_task_ids(api)
    async with sdk(service.url, caller.key, max_retries=2) as retrying:
        with pytest.raises(openai.InternalServerError) as cancelled:
            await retrying.images.edit(
                image=("photo.png", png(), "image/png"), prompt=f"{PROMPT} [sim:cancel]"
            )
    error = cancelled.value
    assert (error.status_code, error.type) == (500, "server_error")
    assert error.response.headers["x-should-retry"] == "false"
    task_id = error.response.headers["edithook-task-id"]
    assert task_id in error.message
    assert await own_task_ids(api) == before | {task_id}
    assert (await api.get(f"/v1/tasks/{task_id}")).json()["status"] == "cancelled"


async def test_a_wait_that_runs_out_is_a_504_the_sdk_does_not_retry(
    short_replica: RunningServer, caller: Caller, api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """Past EDITHOOK_OPENAI_WAIT_SECONDS the answer is 504 `wait_timeout` naming the task,
    which goes on; `x-should-retry: false` keeps the SDK (retries on) from sending it again."""
    before = await own_task_ids(api)
    async with sdk(short_replica.url, caller.key, max_retries=2) as retrying:
        with pytest.raises(openai.InternalServerError) as late:
            await retrying.images.edit(
                image=("photo.png", png(), "image/png"), prompt=f"{PROMPT} [sim:hold]"
            )
    error = late.value
    assert (error.status_code, error.code) == (504, "wait_timeout")
    assert error.response.headers["x-should-retry"] == "false"
    task_id = error.response.headers["edithook-task-id"]
    assert task_id in error.message
    assert f"{SHORT_WAIT_SECONDS:g} s" in error.message
    assert await own_task_ids(api) == before | {task_id}
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["status"] not in ("completed", "failed", "cancelled")
    # End the held task, so that nothing of it is left running.
    deadline = time.monotonic() + 15
    while task["provider_task_id"] is None and time.monotonic() < deadline:
        task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["provider_task_id"] is not None
    ended = await sim.post(f"/_sim/tasks/{task['provider_task_id']}/complete")
    assert ended.status_code == 200, ended.text


async def test_a_bare_multipart_request_with_edithooks_own_fields(
    service: Service, caller: Caller, api: httpx.AsyncClient
) -> None:
    """Without the SDK: a plain multipart POST with edithook's extra fields; they reach the
    task as `POST /v1/tasks` would have stored them."""
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        answer = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=[("image", ("photo.png", png(), "image/png"))],
            data={
                "prompt": PROMPT,
                "model": MODEL,
                "n": "1",
                "size": "1024x1536",
                "response_format": "b64_json",
                "negative_prompt": "blurry",
                "seed": "7",
                "watermark": "true",
                "prompt_extend": "false",
                "quality": "auto",
            },
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"created", "data"}
    assert set(body["data"][0]) == {"b64_json"}
    task_id = answer.headers["edithook-task-id"]
    request: dict[str, Any] = (await api.get(f"/v1/tasks/{task_id}")).json()["request"]
    assert {k: request[k] for k in ("n", "size", "negative_prompt", "seed")} == {
        "n": 1,
        "size": "1024x1536",
        "negative_prompt": "blurry",
        "seed": 7,
    }
    assert (request["watermark"], request["prompt_extend"]) == (True, False)


async def test_bare_refusals_are_json_in_openais_shape(service: Service, caller: Caller) -> None:
    """No key, a missing prompt, an unknown field: `{"error": {message, type, param, code}}`
    as application/json, never problem details."""
    image = [("image", ("photo.png", png(), "image/png"))]
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        no_key = await http.post("/v1/images/edits", files=image, data={"prompt": PROMPT})
        no_prompt = await http.post("/v1/images/edits", headers=caller.headers, files=image)
        unknown = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=image,
            data={"prompt": PROMPT, "negative_promt": "typo"},
        )
        streamed = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=image,
            data={"prompt": PROMPT, "stream": "true"},
        )
        gif = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=image,
            data={"prompt": PROMPT, "response_format": "gif"},
        )
        long_user = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=image,
            data={"prompt": PROMPT, "user": "u" * 501},
        )
    expected = {
        no_key: (401, None, "invalid_api_key"),
        no_prompt: (400, "prompt", "missing_required_parameter"),
        unknown: (400, "negative_promt", "unknown_parameter"),
        streamed: (400, "stream", "unsupported_value"),
        gif: (400, "response_format", "invalid_value"),
        long_user: (400, "user", "invalid_value"),
    }
    for answer, (status, param, code) in expected.items():
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["param"], error["code"]) == (param, code)
        assert error["message"]


async def test_an_image_over_the_upload_limit_and_a_body_over_three_are_413(
    short_replica: RunningServer, caller: Caller
) -> None:
    """Each file is held to EDITHOOK_UPLOAD_MAX_BYTES, and the edge holds the body to three
    of them (and the fields): both answered in OpenAI's shape."""
    big = noise_png(400)
    assert len(big) > SMALL_UPLOAD_BYTES
    async with httpx.AsyncClient(base_url=short_replica.url, timeout=30) as http:
        one = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=[("image", ("big.png", big, "image/png"))],
            data={"prompt": PROMPT},
        )
        many = await http.post(
            "/v1/images/edits",
            headers=caller.headers,
            files=[("image[]", (f"{i}.png", big, "image/png")) for i in range(8)],
            data={"prompt": PROMPT},
        )
    for answer in (one, many):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"
    assert one.json()["error"]["param"] == "image"


async def test_a_tampered_or_expired_result_link_is_refused(
    client: openai.AsyncOpenAI, service: Service
) -> None:
    """The link serves only its own path, only until it expires: another result's path, an
    altered signature or expiry, and a link past its expiry are 403 problems."""
    result = await client.images.edit(image=("photo.png", png(), "image/png"), prompt=PROMPT)
    assert result.data is not None
    url = result.data[0].url
    assert url is not None
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    key = link_key(CALLBACK_SECRET)
    past = sign(key, parts.path, int(time.time()) - 1)

    def at(path: str, **changes: str) -> str:
        values = {**query, **changes}
        return urlunsplit(
            parts._replace(path=path, query="&".join(f"{k}={v}" for k, v in values.items()))
        )

    other = parts.path.replace("/0/content", "/1/content")
    cases = {
        at(parts.path, signature=query["signature"][:-2] + "AA"): "link-invalid",
        at(parts.path, expires=str(int(query["expires"]) + 60)): "link-invalid",
        at(other): "link-invalid",
        service.url + past: "link-expired",
    }
    async with httpx.AsyncClient(timeout=30) as anonymous:
        assert (await anonymous.get(url)).status_code == 200
        for link, slug in cases.items():
            refused = await anonymous.get(link)
            assert refused.status_code == 403, (link, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"].endswith(slug), link
        unknown = sign(key, content_path(uuid.uuid4(), 0, "png"), int(time.time()) + 60)
        assert (await anonymous.get(service.url + unknown)).status_code == 404
