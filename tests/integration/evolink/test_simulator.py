"""The EvoLink simulator over real HTTP: documented shapes, rules, lifecycle, callbacks, faults."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from evolink_simulator import SimulatorConfig
from evolink_simulator.state import Simulator

if TYPE_CHECKING:
    from tests.integration.evolink.conftest import CallbackSink, Sim, SimFactory

TASK_ID = re.compile(r"^task-unified-(\d+)-[a-z0-9]{8}$")
VALID = {
    "model": "qwen-image-edit-plus",
    "prompt": "make it snow",
    "image_urls": ["https://cdn.example.com/in.png"],
}


async def test_create_answers_a_pending_task_object(sim: Sim) -> None:
    """Create answers 200 with the documented task object: id format, pending, usage per n."""
    task = await sim.create(n=3)
    match = TASK_ID.match(task["id"])
    assert match is not None
    assert int(match.group(1)) == task["created"]
    assert task["object"] == "image.generation.task"
    assert task["model"] == "qwen-image-edit-plus"
    assert (task["status"], task["progress"], task["type"]) == ("pending", 0, "image")
    assert task["task_info"]["can_cancel"] is True
    assert task["task_info"]["estimated_time"] >= 1
    assert task["usage"] == {
        "billing_rule": "per_call",
        "credits_reserved": 3,
        "user_group": "default",
    }
    assert "results" not in task
    assert "error" not in task


async def test_a_task_passes_through_processing_to_completed_with_n_pngs(sim: Sim) -> None:
    """pending → processing (progress rising) → completed with n real 1024x1024 PNG links."""
    downloads = (await sim.stats())["file_downloads"]
    task = await sim.create(n=3, seed=7)
    seen: list[tuple[str, int]] = []
    while not seen or seen[-1][0] != "completed":
        current = await sim.get(task["id"])
        seen.append((current["status"], current["progress"]))
        await asyncio.sleep(0.01)
    assert seen[0][0] == "pending"
    assert any(s == "processing" and 10 <= p <= 90 for s, p in seen)
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    assert current["progress"] == 100
    assert current["task_info"]["can_cancel"] is False
    assert len(current["results"]) == 3
    colours = set()
    for url in current["results"]:
        assert url.startswith(sim.url)
        image = await sim.http.get(url)
        assert image.headers["content-type"] == "image/png"
        decoded = Image.open(io.BytesIO(image.content))
        assert (decoded.format, decoded.size) == ("PNG", (1024, 1024))
        colours.add(decoded.getpixel((0, 0)))
    assert len(colours) == 3
    assert (await sim.stats())["file_downloads"] == downloads + 3


async def test_the_requested_size_is_the_size_of_the_result(sim: Sim) -> None:
    """With n=1 and size WxH the result PNG is exactly W by H."""
    task = await sim.create(size="640x1536")
    done = await sim.wait_for(task["id"], "completed")
    image = await sim.http.get(done["results"][0])
    assert Image.open(io.BytesIO(image.content)).size == (640, 1536)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"model": None}, "model"),
    ({"model": "qwen-image-edit"}, "model"),
    ({"prompt": None}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"image_urls": None}, "image_urls"),
    ({"image_urls": []}, "image_urls"),
    ({"image_urls": ["https://a.example/1.png"] * 4}, "image_urls"),
    ({"image_urls": ["not a url"]}, "image_urls"),
    ({"n": 0}, "n"),
    ({"n": 7}, "n"),
    ({"n": 2.5}, "n"),
    ({"n": True}, "n"),
    ({"negative_prompt": "x" * 501}, "negative_prompt"),
    ({"size": "1024*1024"}, "size"),
    ({"size": "1024X1024"}, "size"),
    ({"size": "511x1024"}, "size"),
    ({"size": "1024x2049"}, "size"),
    ({"size": "1024x1024", "n": 2}, "size"),
    ({"seed": -1}, "seed"),
    ({"seed": 2147483648}, "seed"),
    ({"prompt_extend": "yes"}, "prompt_extend"),
    ({"watermark": 1}, "watermark"),
    ({"callback_url": "ftp://hooks.example.com/x"}, "callback_url"),
    ({"callback_url": "https://hooks.example.com/" + "x" * 2030}, "callback_url"),
    ({"prompt": "snow [sim:explode]"}, "prompt"),
]


@pytest.mark.parametrize(("change", "param"), INVALID, ids=[p for _, p in INVALID])
async def test_each_documented_rule_is_refused_with_400(
    shared_sims: dict[str, Sim], change: dict[str, Any], param: str
) -> None:
    """A body breaking one rule gets 400 in both envelope styles; no task is created."""
    body = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    for style, sim in shared_sims.items():
        before = (await sim.stats())["creates"]
        response = await sim.http.post("/v1/images/generations", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"]
        if style == "string":
            assert error["code"] == "invalid_request"
        else:
            assert (error["code"], error["param"]) == (400, param)
        assert (await sim.stats())["creates"] == before


async def test_boundary_values_are_accepted(sim: Sim) -> None:
    """Values at the edges of every documented range are valid."""
    for fields in (
        {"prompt": "p" * 2000, "negative_prompt": "n" * 500, "seed": 0},
        {"n": 6, "seed": 2147483647, "prompt_extend": False, "watermark": True},
        {"size": "512x2048", "image_urls": [f"https://a.example/{i}.png" for i in range(3)]},
    ):
        await sim.create(**fields)
    response = await sim.http.post("/v1/images/generations", content=b"{not json")
    assert response.status_code == 400


async def test_requests_without_a_valid_bearer_key_get_401(start_sim: SimFactory) -> None:
    """Missing, non-Bearer or wrong keys get 401 unauthorized; with api_key None any key works."""
    sim = await start_sim()
    for headers in ({}, {"Authorization": f"Basic {'x' * 8}"}, {"Authorization": "Bearer wrong"}):
        async with httpx.AsyncClient(base_url=sim.url, headers=headers) as anonymous:
            for response in (
                await anonymous.post("/v1/images/generations", json=VALID),
                await anonymous.get("/v1/tasks/task-unified-1-abcdefgh"),
            ):
                assert response.status_code == 401
                error = response.json()["error"]
                assert (error["code"], error["type"]) == ("unauthorized", "authentication_error")
    open_sim = await start_sim(api_key=None)
    async with httpx.AsyncClient(base_url=open_sim.url) as client:
        accepted = await client.post(
            "/v1/images/generations", json=VALID, headers={"Authorization": "Bearer anything"}
        )
        refused = await client.post("/v1/images/generations", json=VALID)
    assert (accepted.status_code, refused.status_code) == (200, 401)


async def test_get_refuses_malformed_ids_and_does_not_know_strangers(sim: Sim) -> None:
    """GET: an id without the task-unified- prefix is 400 (param task_id); unknown is 404."""
    malformed = await sim.http.get("/v1/tasks/abc")
    assert malformed.status_code == 400
    assert malformed.json()["error"]["param"] == "task_id"
    unknown = await sim.http.get("/v1/tasks/task-unified-1757156493-zzzzzzzz")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "task_not_found"


async def test_the_fail_directive_ends_the_task_failed(sim: Sim) -> None:
    """[sim:fail=<code>] ends failed with error.code, a message and type task_error."""
    task = await sim.create(prompt="a celebrity [sim:fail=content_policy_violation]")
    done = await sim.wait_for(task["id"], "completed", "failed")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_policy_violation"
    assert done["error"]["message"]
    assert done["error"]["type"] == "task_error"
    assert "results" not in done


async def test_both_cancel_directives(sim: Sim) -> None:
    """[sim:cancel] ends `cancelled`; [sim:cancel-as-failed] ends failed + request_cancelled."""
    plain = await sim.create(prompt="x [sim:cancel]")
    as_failed = await sim.create(prompt="x [sim:cancel-as-failed]")
    first = await sim.wait_for(plain["id"], "completed", "failed", "cancelled")
    second = await sim.wait_for(as_failed["id"], "completed", "failed", "cancelled")
    assert first["status"] == "cancelled"
    assert "error" not in first
    assert second["status"] == "failed"
    assert second["error"]["code"] == "request_cancelled"


async def test_slow_and_results_directives(sim: Sim) -> None:
    """[sim:slow=S] sets the processing time (and estimate); [sim:results=K] caps the images."""
    task = await sim.create(prompt="x [sim:slow=30] [sim:results=1]", n=3)
    assert task["task_info"]["estimated_time"] == 31
    await asyncio.sleep(0.4)
    assert (await sim.get(task["id"]))["status"] == "processing"
    done = (await sim.http.post(f"/_sim/tasks/{task['id']}/complete")).json()
    assert len(done["results"]) == 1
    assert done["usage"]["credits_reserved"] == 3


async def test_tasks_are_forgotten_after_their_retention(start_sim: SimFactory) -> None:
    """With task_retention_seconds set, GET answers 404 task_not_found once it has passed."""
    sim = await start_sim(task_retention_seconds=0.3)
    task = await sim.create()
    assert (await sim.http.get(f"/v1/tasks/{task['id']}")).status_code == 200
    await asyncio.sleep(0.4)
    gone = await sim.http.get(f"/v1/tasks/{task['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "task_not_found"


async def test_hold_keeps_a_task_processing_until_a_control_ends_it(
    sim: Sim, sink: CallbackSink
) -> None:
    """[sim:hold] stays processing past its time; /complete ends it and fires one callback."""
    task = await sim.create(prompt="x [sim:hold]", callback_url=sink.hook())
    await asyncio.sleep(0.4)
    assert (await sim.get(task["id"]))["status"] == "processing"
    assert sink.received == []
    done = (await sim.http.post(f"/_sim/tasks/{task['id']}/complete")).json()
    assert done["status"] == "completed"
    assert len(done["results"]) == 1
    await sink.wait_for(1)
    assert sink.received[0].body == await sim.get(task["id"])


async def test_control_endpoints_end_tasks_once(sim: Sim) -> None:
    """/fail, /cancel (both forms) end a held task now; a second control changes nothing."""
    ids = [(await sim.create(prompt="x [sim:hold]"))["id"] for _ in range(3)]
    creates = (await sim.stats())["creates"]
    failed = await sim.http.post(
        f"/_sim/tasks/{ids[0]}/fail", json={"code": "service_error", "message": "upstream down"}
    )
    assert failed.json()["error"] == {
        "code": "service_error",
        "message": "upstream down",
        "type": "task_error",
    }
    cancelled = await sim.http.post(f"/_sim/tasks/{ids[1]}/cancel", json={"form": "status"})
    assert cancelled.json()["status"] == "cancelled"
    as_failed = await sim.http.post(f"/_sim/tasks/{ids[2]}/cancel", json={"form": "failed"})
    assert as_failed.json()["error"]["code"] == "request_cancelled"
    again = await sim.http.post(f"/_sim/tasks/{ids[0]}/complete")
    assert again.json()["status"] == "failed"
    assert (await sim.http.post("/_sim/tasks/task-unified-1-nothere0/complete")).status_code == 404
    assert (await sim.stats())["creates"] == creates


async def test_a_callback_is_delivered_once_on_2xx(sim: Sim, sink: CallbackSink) -> None:
    """The terminal task object is POSTed as JSON once; the record shows one 200 attempt."""
    before = await sim.stats()
    task = await sim.create(callback_url=sink.hook("one?token=s3cret"))
    done = await sim.wait_for(task["id"], "completed")
    await sink.wait_for(1)
    attempts = await sim.wait_for_callbacks(task["id"], 1)
    await asyncio.sleep(0.3)
    assert len(sink.received) == 1
    received = sink.received[0]
    assert received.headers["content-type"] == "application/json"
    assert received.body == done
    assert [(a["attempt"], a["status_code"], a["error"]) for a in attempts] == [(1, 200, None)]
    after = await sim.stats()
    assert after["callbacks_sent"] - before["callbacks_sent"] == 1
    assert after["callbacks_delivered"] - before["callbacks_delivered"] == 1


async def test_a_failing_receiver_gets_three_retries_with_growing_gaps(
    sim: Sim, sink: CallbackSink
) -> None:
    """Non-2xx answers: exactly 4 attempts (1 + 3 retries), each gap longer than the last."""
    sink.statuses["task"] = [500] * 10
    task = await sim.create(prompt="x [sim:fail=service_error]", callback_url=sink.hook())
    await sink.wait_for(4)
    await asyncio.sleep(0.3)
    assert len(sink.received) == 4
    times = [r.at for r in sink.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert all(r.body["status"] == "failed" for r in sink.received)
    attempts = (await sim.record(task["id"]))["callbacks"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(i, 500) for i in (1, 2, 3, 4)]


async def test_retries_stop_at_the_first_2xx(sim: Sim, sink: CallbackSink) -> None:
    """Two failures then a 204: three attempts in all, none after."""
    sink.statuses["task"] = [503, 429, 204]
    task = await sim.create(callback_url=sink.hook())
    attempts = await sim.wait_for_callbacks(task["id"], 3)
    await asyncio.sleep(0.3)
    final = (await sim.record(task["id"]))["callbacks"]
    assert [a["status_code"] for a in final] == [503, 429, 204]
    assert len(attempts) == len(sink.received) == 3


async def test_redirects_timeouts_and_refusals_count_as_failures(
    start_sim: SimFactory, sink: CallbackSink, closed_url: str
) -> None:
    """A 3xx is not followed, a slow receiver times out, a closed port is refused: all retried."""
    sim = await start_sim(callback_timeout_seconds=0.1, callback_retry_delays=(0.02, 0.02, 0.02))
    sink.statuses["redirect"] = [307] * 4
    sink.delays["slow"] = 0.3
    redirected = await sim.create(prompt="x [sim:cancel]", callback_url=sink.hook("redirect"))
    slow = await sim.create(callback_url=sink.hook("slow"))
    refused = await sim.create(callback_url=f"{closed_url}/hook")

    attempts = await sim.wait_for_callbacks(redirected["id"], 4)
    assert [a["status_code"] for a in attempts] == [307] * 4
    attempts = await sim.wait_for_callbacks(slow["id"], 4)
    assert [a["error"] for a in attempts] == ["timeout"] * 4
    attempts = await sim.wait_for_callbacks(refused["id"], 4)
    assert all(a["status_code"] is None and a["error"] for a in attempts)
    assert {r.path for r in sink.received} == {"redirect", "slow"}


async def test_no_callback_directive_and_disabled_callbacks_send_nothing(
    sim: Sim, start_sim: SimFactory, sink: CallbackSink
) -> None:
    """[sim:no-callback], or callbacks_enabled=False, complete the task without a callback."""
    quiet = await sim.create(prompt="x [sim:no-callback]", callback_url=sink.hook())
    disabled_sim = await start_sim(callbacks_enabled=False)
    disabled = await disabled_sim.create(callback_url=sink.hook())
    await sim.wait_for(quiet["id"], "completed")
    await disabled_sim.wait_for(disabled["id"], "completed")
    await asyncio.sleep(0.2)
    assert sink.received == []
    assert (await sim.record(quiet["id"]))["callbacks"] == []
    assert (await disabled_sim.stats())["callbacks_sent"] == 0


async def test_secure_callback_rules_when_insecure_callbacks_are_off(start_sim: SimFactory) -> None:
    """https only; no loopback, private, link-local or localhost targets (any IP spelling)."""
    sim = await start_sim(allow_insecure_callbacks=False)
    for url in (
        "http://hooks.example.com/cb",
        "https://127.0.0.1/cb",
        "https://10.1.2.3/cb",
        "https://172.16.0.9/cb",
        "https://192.168.1.1/cb",
        "https://169.254.169.254/latest",
        "https://[::1]/cb",
        "https://[::ffff:10.0.0.1]/cb",
        "https://localhost:8443/cb",
        "https://2130706433/cb",
        "https://127.1/cb",
        "https://localhost./cb",
        "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/cb",
        "https://[64:ff9b::7f00:1]/cb",
        "https://[2002:7f00:1::]/cb",
    ):
        body = {**VALID, "callback_url": url}
        response = await sim.http.post("/v1/images/generations", json=body)
        assert response.status_code == 400, url
        assert url not in response.text
    await sim.create(callback_url="https://hooks.example.com/evolink/cb?job=8f1c")


async def test_result_links_expire_after_their_ttl(start_sim: SimFactory) -> None:
    """A result link works until result_ttl_seconds after completion, then is a 404 envelope."""
    sim = await start_sim(result_ttl_seconds=0.3)
    task = await sim.create()
    url = (await sim.wait_for(task["id"], "completed"))["results"][0]
    assert (await sim.http.get(url)).status_code == 200
    await asyncio.sleep(0.4)
    expired = await sim.http.get(url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "file_expired"
    assert (await sim.get(task["id"]))["results"] == [url]


async def test_a_status_fault_answers_with_retry_after_then_clears(sim: Sim) -> None:
    """A 429 fault answers `times` calls with the envelope and Retry-After, then normal service."""
    creates = (await sim.stats())["creates"]
    await sim.fault(endpoint="create", status=429, retry_after=1, times=2)
    for _ in range(2):
        response = await sim.http.post("/v1/images/generations", json=VALID)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await sim.http.post("/v1/images/generations", json=VALID)).status_code == 200
    await sim.fault(endpoint="get", status=503, times=5)
    assert (await sim.http.delete("/_sim/faults")).status_code == 204
    assert (await sim.http.get("/v1/tasks/task-unified-1-abcdefgh")).status_code == 404
    assert (await sim.stats())["creates"] == creates + 1


async def test_accept_then_hang_creates_the_task_but_answers_late(
    sim: Sim, sink: CallbackSink
) -> None:
    """The caller times out, yet the task exists and runs to completion, callback included."""
    creates = (await sim.stats())["creates"]
    await sim.fault(endpoint="create", mode="accept_then_hang", hang_seconds=5)
    body = {**VALID, "callback_url": sink.hook()}
    impatient = httpx.AsyncClient(base_url=sim.url, headers=sim.http.headers, timeout=0.3)
    async with impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/v1/images/generations", json=body)
    assert (await sim.stats())["creates"] == creates + 1
    [callback] = await sink.wait_for(1)
    assert callback.body["status"] == "completed"
    record = await sim.record(callback.body["id"])
    assert record["request"]["callback_url"] == sink.hook()


async def test_integer_style_errors_carry_the_status_as_code(start_sim: SimFactory) -> None:
    """The older envelope: integer code, older type names, fallback_suggestion on 429."""
    sim = await start_sim(error_code_style="integer")
    missing = await sim.http.get("/v1/tasks/task-unified-1-abcdefgh")
    assert missing.json()["error"] == {
        "code": 404,
        "message": "Task not found or expired",
        "type": "not_found_error",
    }
    await sim.fault(endpoint="get", status=429, retry_after=60)
    limited = (await sim.http.get("/v1/tasks/task-unified-1-abcdefgh")).json()["error"]
    assert (limited["code"], limited["type"]) == (429, "rate_limit_error")
    assert limited["fallback_suggestion"] == "retry after 60 seconds"


@pytest.mark.timeout(10)
async def test_stop_returns_when_a_task_has_just_finished() -> None:
    """A background task that finished in this loop iteration is still in `_background` (the
    done-callback that drops it has not run); stopping must yield to the loop, not spin."""
    simulator = Simulator(SimulatorConfig())
    await simulator.start()

    async def quick() -> None:
        return None

    simulator._spawn(quick())
    await asyncio.sleep(0)  # it runs and ends; the callback that forgets it is only queued
    await simulator.stop()
    assert not simulator._background
