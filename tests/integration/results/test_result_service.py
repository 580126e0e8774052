"""Copying result images into our storage, confirmed first, and serving them back.

Most tasks here are created at the simulator and recorded as completed directly in the
database, so that no copy job exists and the test's own run is the only one; the forged
callback test goes through the API (and so the worker) on purpose. Every task recorded is
the test's own client's (`db`), so that the API serves it to the test and to no other.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy import text as sql

from app.db import create_pool, transaction
from app.models import Task, TaskEvent, TaskResult
from app.notify import TASK_CHANNEL
from app.resources import Resources
from app.results.copy import EXPIRED, NOT_CONFIRMED, StoreReport, store_task_results
from app.results.storage import ResultStorage, StorageError
from app.security import callback_path, callback_token
from tests.helpers import CALLBACK_SECRET, create_task, wait_for_task

if TYPE_CHECKING:
    from tests.conftest import Caller, Service
    from tests.integration.results.conftest import ImageHost

MAX_BYTES = 10_000_000


async def completed_at_simulator(
    sim: httpx.AsyncClient, *, n: int = 1, prompt: str = "Make the sky purple"
) -> dict[str, Any]:
    """A task created directly at the simulator and completed there at once; its task object."""
    response = await sim.post(
        "/v1/images/generations",
        json={
            "model": "qwen-image-edit-plus",
            "prompt": prompt,
            "image_urls": ["https://cdn.example.com/in/abc123.png"],
            "n": n,
        },
    )
    assert response.status_code == 200, response.text
    completed = await sim.post(f"/_sim/tasks/{response.json()['id']}/complete")
    body: dict[str, Any] = completed.json()
    assert body["status"] == "completed", body
    return body


@dataclass
class Db:
    """The service's resources, and the test's own client: the one its recorded tasks have."""

    resources: Resources
    client: str


@pytest.fixture
def db(service: Service, caller: Caller) -> Db:
    return Db(service.resources, caller.name)


async def record_completed(
    db: Db,
    provider_task: dict[str, Any],
    *,
    urls: list[str] | None = None,
    status: str = "completed",
    resolved_by: str | None = None,
    webhook_url: str | None = None,
) -> uuid.UUID:
    """Our task for `provider_task`, completed with `urls` (its real results by default), as
    if told by `resolved_by` (None: by nothing the copy trusts without asking)."""
    task_id = uuid.uuid4()
    recorded = provider_task.get("results", []) if urls is None else urls
    async with transaction(db.resources.sessions) as session:
        session.add(
            Task(
                id=task_id,
                client=db.client,
                status=status,
                progress=100,
                request={"prompt": "Make the sky purple"},
                metadata_={},
                request_hash="test",
                provider_task_id=provider_task["id"],
                finished_at=datetime.now(UTC),
                resolved_by=resolved_by,
                webhook_url=webhook_url,
            )
        )
        await session.flush()
        for index, url in enumerate(recorded):
            session.add(TaskResult(task_id=task_id, index=index, provider_url=url))
    return task_id


async def run(
    db: Db,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    task_id: uuid.UUID | str,
    **options: Any,
) -> StoreReport:
    options.setdefault("max_bytes", MAX_BYTES)
    options.setdefault("allow_loopback", True)
    resources = db.resources
    pool = options.pop("pool", resources.pool)
    return await store_task_results(
        pool,
        resources.sessions,
        resources.evolink,
        storage,
        http,
        uuid.UUID(str(task_id)),
        **options,
    )


async def rows_of(db: Db, task_id: uuid.UUID | str) -> list[TaskResult]:
    async with db.resources.sessions() as session:
        found = await session.execute(
            select(TaskResult)
            .where(TaskResult.task_id == uuid.UUID(str(task_id)))
            .order_by(TaskResult.index)
        )
        return list(found.scalars())


async def events_of(db: Db, task_id: uuid.UUID | str) -> list[TaskEvent]:
    async with db.resources.sessions() as session:
        found = await session.execute(
            select(TaskEvent)
            .where(TaskEvent.task_id == uuid.UUID(str(task_id)))
            .order_by(TaskEvent.id)
        )
        return list(found.scalars())


async def stored_bytes(storage: ResultStorage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key)])


async def stats(sim: httpx.AsyncClient) -> dict[str, int]:
    body: dict[str, int] = (await sim.get("/_sim/stats")).json()
    return body


@pytest.fixture
def storage(tmp_path: Path) -> ResultStorage:
    return ResultStorage(str(tmp_path / "results"))


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection listening on the task channel."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {TASK_CHANNEL}")
        yield conn


async def notified(conn: psycopg.AsyncConnection[Any], task_id: uuid.UUID) -> int:
    """How many notifications for `task_id` arrived (they are sent at commit)."""
    payloads = [n.payload async for n in conn.notifies(timeout=0.3)]
    return payloads.count(str(task_id))


class FlakyStorage(ResultStorage):
    """A local store whose first `failures` puts fail as an unreachable bucket would."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.puts = 0

    async def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        if self.puts <= self.failures:
            raise StorageError(f"could not store {key}: the bucket is unreachable")
        await super().put(key, data)


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_confirmed_results_are_stored_with_size_and_digest(
    db: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    listener: psycopg.AsyncConnection[Any],
) -> None:
    """Each image is confirmed, downloaded, stored under its key and described in its row."""
    provider = await completed_at_simulator(sim, n=2)
    task_id = await record_completed(db, provider)
    gets = (await stats(sim))["gets"]

    report = await run(db, storage, http, task_id)

    assert report == StoreReport(stored=2, failed=0, pending=0, retry_in=None)
    assert (await stats(sim))["gets"] == gets + 1  # confirmed with the provider first
    for index, row in enumerate(await rows_of(db, task_id)):
        source = (await http.get(provider["results"][index])).content
        assert row.status == "stored"
        assert (row.width, row.height) == Image.open(io.BytesIO(source)).size == (1024, 1024)
        assert row.sha256 == hashlib.sha256(source).hexdigest()
        assert (row.content_type, row.size_bytes) == ("image/png", len(source))
        assert row.storage_key == f"tasks/{task_id}/{index}.png"
        assert row.error is None
        assert row.stored_at is not None
        assert await stored_bytes(storage, row.storage_key) == source
    assert await notified(listener, task_id) == 1
    assert [e.outcome for e in await events_of(db, task_id)] == []  # success is quiet


@pytest.mark.parametrize("told_by", ["poll", "submission"])
async def test_results_from_the_providers_answer_to_our_call_are_not_confirmed_again(
    db: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    listener: psycopg.AsyncConnection[Any],
    told_by: str,
) -> None:
    """A completion learnt from EvoLink's answer to our poll or create listed the results
    itself: they are fetched without asking EvoLink the same question again."""
    provider = await completed_at_simulator(sim, n=2)
    task_id = await record_completed(db, provider, resolved_by=told_by)
    before = await stats(sim)

    report = await run(db, storage, http, task_id)

    assert report == StoreReport(stored=2, failed=0, pending=0, retry_in=None)
    after = await stats(sim)
    assert after["gets"] == before["gets"]
    assert after["file_downloads"] == before["file_downloads"] + 2
    rows = await rows_of(db, task_id)
    assert [(r.status, r.provider_url) for r in rows] == [
        ("stored", url) for url in provider["results"]
    ]
    assert await notified(listener, task_id) == 1
    assert await events_of(db, task_id) == []


async def test_a_poll_completion_without_rows_still_asks_the_provider(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Nothing to fetch as it is: the provider is asked, and the rows it lists are added."""
    provider = await completed_at_simulator(sim)
    task_id = await record_completed(db, provider, urls=[], resolved_by="poll")
    gets = (await stats(sim))["gets"]
    assert (await run(db, storage, http, task_id)).stored == 1
    assert (await stats(sim))["gets"] == gets + 1


async def test_a_completion_without_any_result_is_settled_and_tells_its_webhooks_once(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """The provider completed the task with no image: once it confirms that, the task is
    settled, and its `task.succeeded` goes out, once, as for any other completion."""
    provider = await completed_at_simulator(sim, prompt="Make the sky purple [sim:results=0]")
    assert not provider.get("results")
    hook = "https://own.example.com/hook"
    task_id = await record_completed(db, provider, urls=[], resolved_by="poll", webhook_url=hook)
    for _ in range(2):
        report = await run(db, storage, http, task_id)
        assert (report.stored, report.failed, report.retry_in) == (0, 0, None)
    async with db.resources.sessions() as session:
        made = (
            await session.execute(
                sql("SELECT type, url FROM webhook_messages WHERE task_id = :id"),
                {"id": task_id},
            )
        ).all()
    assert [tuple(row) for row in made] == [("task.succeeded", hook)]


async def test_the_copy_goes_through_the_engine_when_the_direct_pool_cannot(
    db: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    listener: psycopg.AsyncConnection[Any],
) -> None:
    """A direct pool with no connection to give: the same reads and records, through the
    engine's connections."""
    task_id = await record_completed(db, await completed_at_simulator(sim, n=2))
    # Nothing listens on port 1: the pool never gets a connection and times out.
    dead = create_pool("postgresql://edithook@127.0.0.1:1/none", pool_size=1)
    await dead.open(wait=False)
    try:
        report = await run(db, storage, http, task_id, pool=dead)
    finally:
        await dead.close()
    assert report == StoreReport(stored=2, failed=0, pending=0, retry_in=None)
    assert [r.status for r in await rows_of(db, task_id)] == ["stored", "stored"]
    assert await notified(listener, task_id) == 1


async def test_a_second_run_stores_nothing_new(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Once every row is settled, a rerun neither asks the provider nor downloads."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    assert (await run(db, storage, http, task_id)).stored == 1
    before_rows = [(r.status, r.stored_at) for r in await rows_of(db, task_id)]
    before = await stats(sim)

    assert await run(db, storage, http, task_id) == StoreReport()

    assert await stats(sim) == before
    assert [(r.status, r.stored_at) for r in await rows_of(db, task_id)] == before_rows


async def test_a_task_that_is_not_completed_is_left_alone(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Only completed tasks have results to copy; nothing else is asked or fetched."""
    provider = await completed_at_simulator(sim)
    task_id = await record_completed(db, provider, status="processing")
    before = await stats(sim)
    assert await run(db, storage, http, task_id) == StoreReport()
    assert await run(db, storage, http, uuid.uuid4()) == StoreReport()
    assert await stats(sim) == before
    assert [r.status for r in await rows_of(db, task_id)] == ["pending"]


async def test_forged_result_urls_are_never_downloaded(
    db: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    host: ImageHost,
    storage: ResultStorage,
    http: httpx.AsyncClient,
) -> None:
    """A callback with a valid token but invented URLs: only the provider's own are fetched."""
    # Two results asked for, one produced: the second forged URL has nothing to match.
    created = await create_task(api, prompt="hold it [sim:hold] [sim:results=1]", n=2)
    task = await wait_for_task(api, created["id"], {"pending", "processing"})
    forged = [host.serve(f"/forged/{i}.png", b"not fetched") for i in range(2)]
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task["id"]))
    body = {"id": task["provider_task_id"], "status": "completed", "results": forged}
    response = await api.post(callback_path(uuid.UUID(task["id"]), token), json=body)
    assert response.json()["outcome"] == "applied", response.text

    # The provider still says processing: nothing is confirmed, so nothing is fetched yet.
    early = await run(db, storage, http, task["id"])
    assert (early.stored, early.pending, early.retry_in) == (0, 2, 30.0)
    assert [r.status for r in await rows_of(db, task["id"])] == ["pending", "pending"]
    await run(db, storage, http, task["id"])  # the same situation: no second event
    polls = [e for e in await events_of(db, task["id"]) if e.kind == "poll"]
    assert [(e.outcome, e.provider_status) for e in polls] == [("anomaly", "processing")]

    await sim.post(f"/_sim/tasks/{task['provider_task_id']}/complete")
    await run(db, storage, http, task["id"])

    first, second = await rows_of(db, task["id"])
    real = (await sim.get(f"/v1/tasks/{task['provider_task_id']}")).json()["results"]
    assert (first.status, first.provider_url) == ("stored", real[0])
    assert (second.status, second.error) == ("failed", NOT_CONFIRMED)
    assert host.seen == []
    anomalies = [e for e in await events_of(db, task["id"]) if e.outcome == "anomaly"]
    assert anomalies
    assert all(e.kind == "poll" for e in anomalies)
    assert any("replaced by the confirmed URL" in (e.detail or "") for e in anomalies)
    assert any(real[0] in (e.body or "") for e in anomalies)


async def test_missing_rows_are_added_from_the_confirmed_list(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A completion recorded without URLs gets the provider's results, stored."""
    task_id = await record_completed(db, await completed_at_simulator(sim, n=2), urls=[])
    report = await run(db, storage, http, task_id)
    assert (report.stored, report.failed) == (2, 0)
    assert [r.status for r in await rows_of(db, task_id)] == ["stored", "stored"]
    [event] = await events_of(db, task_id)
    assert (event.kind, event.outcome) == ("poll", "anomaly")
    assert "result 1 added" in (event.detail or "")


async def test_rows_are_matched_to_the_confirmed_list_by_index_not_by_position(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Rows 0 and 2 holding the provider's two URLs in order are not its list: row 1 is
    added from it, and row 2, which it does not have, fails unconfirmed."""
    provider = await completed_at_simulator(sim, n=3)
    real = provider["results"][:2]
    answer = {**provider, "results": real}
    await sim.post(
        "/_sim/faults", json={"endpoint": "get", "status": 200, "body": json.dumps(answer)}
    )
    task_id = await record_completed(db, provider, urls=[real[0]])
    async with transaction(db.resources.sessions) as session:
        session.add(TaskResult(task_id=task_id, index=2, provider_url=real[1]))

    report = await run(db, storage, http, task_id)

    assert (report.stored, report.failed) == (2, 1)
    rows = await rows_of(db, task_id)
    assert [(r.index, r.status, r.provider_url) for r in rows] == [
        (0, "stored", real[0]),
        (1, "stored", real[1]),
        (2, "failed", real[1]),
    ]
    assert rows[2].error == NOT_CONFIRMED


async def test_a_storage_failure_leaves_the_row_pending_until_a_rerun(
    db: Db, sim: httpx.AsyncClient, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The row stays pending with the reason shown and a retry asked for; the next run stores."""
    flaky = FlakyStorage(str(tmp_path / "flaky"), failures=1)
    task_id = await record_completed(db, await completed_at_simulator(sim))

    first = await run(db, flaky, http, task_id)
    assert first == StoreReport(stored=0, failed=0, pending=1, retry_in=5.0)
    [row] = await rows_of(db, task_id)
    assert row.status == "pending"
    assert "the bucket is unreachable" in (row.error or "")

    assert (await run(db, flaky, http, task_id)).stored == 1
    [row] = await rows_of(db, task_id)
    assert (row.status, row.error) == ("stored", None)
    assert flaky.puts == 2


async def test_a_link_that_cannot_be_fetched_fails_once_it_expired(
    db: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    listener: psycopg.AsyncConnection[Any],
) -> None:
    """Before expiry a download error means retry; after it, the row fails with the reason."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    async with httpx.AsyncClient(transport=httpx.MockTransport(unreachable)) as broken:
        early = await run(db, storage, broken, task_id)
        assert (early.pending, early.retry_in is not None) == (1, True)
        [row] = await rows_of(db, task_id)
        assert row.status == "pending"
        assert "connection refused" in (row.error or "")

        late = await run(db, storage, broken, task_id, link_ttl=timedelta(0))

    assert late == StoreReport(stored=0, failed=1, pending=0, retry_in=None)
    [row] = await rows_of(db, task_id)
    assert row.status == "failed"
    assert (row.error or "").startswith(f"{EXPIRED}: ")
    assert "connection refused" in (row.error or "")
    [event] = await events_of(db, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")
    assert await notified(listener, task_id) == 1


async def test_a_permanent_download_failure_fails_the_row_and_is_recorded(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """An image over the size limit is failed at once, with an error event saying why."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    report = await run(db, storage, http, task_id, max_bytes=100)
    assert report == StoreReport(stored=0, failed=1, pending=0, retry_in=None)
    [row] = await rows_of(db, task_id)
    assert row.status == "failed"
    assert (row.error or "").startswith("the image is larger than 100 bytes")
    [event] = await events_of(db, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")
    assert "result 0" in (event.detail or "")


async def test_a_confirmation_listing_more_results_than_n_confirms_nothing(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A confirming GET listing more results than the task may have (here 20,000 for at most
    6) adds no rows and fetches nothing; the pending rows fail with the counts."""
    provider = await completed_at_simulator(sim, n=2)
    task_id = await record_completed(db, provider)
    answer = {**provider, "results": [f"https://f.example/{i}.png" for i in range(20_000)]}
    await sim.post(
        "/_sim/faults", json={"endpoint": "get", "status": 200, "body": json.dumps(answer)}
    )
    downloads = (await stats(sim))["file_downloads"]

    report = await run(db, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=2, pending=0, retry_in=None)
    assert (await stats(sim))["file_downloads"] == downloads
    rows = await rows_of(db, task_id)
    assert [row.status for row in rows] == ["failed", "failed"]
    assert all("20000 results" in (row.error or "") for row in rows)


async def test_a_confirmation_error_quoting_the_callback_token_keeps_none_of_it(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """The confirming GET's error, kept on the rows and in an event, has the token scrubbed."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    token = callback_token(CALLBACK_SECRET, task_id)
    message = f"callback {callback_path(task_id, token)} and {token} are unknown"
    await sim.post("/_sim/faults", json={"endpoint": "get", "status": 404, "message": message})

    await run(db, storage, http, task_id, callback_token=token)

    [row] = await rows_of(db, task_id)
    [event] = await events_of(db, task_id)
    assert "[redacted]" in (row.error or "")
    for text in (row.error or "", event.detail or ""):
        assert token[:16] not in text


async def test_a_provider_that_forgot_the_task_fails_the_pending_rows(
    db: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A permanent answer to the confirming GET fails every pending row; nothing is fetched."""
    task_id = await record_completed(db, await completed_at_simulator(sim, n=2))
    await sim.post("/_sim/faults", json={"endpoint": "get", "status": 404})
    downloads = (await stats(sim))["file_downloads"]

    report = await run(db, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=2, pending=0, retry_in=None)
    assert (await stats(sim))["file_downloads"] == downloads
    for row in await rows_of(db, task_id):
        assert row.status == "failed"
        assert "could not confirm" in (row.error or "")
    [event] = await events_of(db, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")


@pytest.mark.parametrize(
    ("fault", "retry_in"),
    [({"status": 503, "retry_after": 7}, 7.0), ({"status": 401}, 300.0)],
    ids=["outage", "our-key-refused"],
)
async def test_a_provider_that_cannot_answer_now_gets_asked_again_later(
    db: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    fault: dict[str, Any],
    retry_in: float,
) -> None:
    """An outage, or a refusal of our own key, keeps rows pending and fetches nothing."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    await sim.post("/_sim/faults", json={"endpoint": "get", **fault})
    downloads = (await stats(sim))["file_downloads"]

    report = await run(db, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=0, pending=1, retry_in=retry_in)
    assert (await stats(sim))["file_downloads"] == downloads
    [row] = await rows_of(db, task_id)
    assert row.status == "pending"
    assert "could not ask the provider" in (row.error or "")


# -- GET /v1/tasks/{task_id}/results/{index} ---------------------------------------------------


async def stored_task(db: Db, sim: httpx.AsyncClient, http: httpx.AsyncClient) -> str:
    """A task whose one result is stored in the db's own storage; its id."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    report = await run(db, db.resources.storage, http, task_id)
    assert report.stored == 1
    return str(task_id)


async def test_a_stored_image_is_served_with_its_etag(
    db: Db, api: httpx.AsyncClient, sim: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    """The bytes come from our storage, with type, length, ETag and long-lived caching."""
    task_id = await stored_task(db, sim, http)
    [row] = await rows_of(db, task_id)
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 200
    assert response.content == await stored_bytes(db.resources.storage, row.storage_key or "")
    assert hashlib.sha256(response.content).hexdigest() == row.sha256
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(row.size_bytes)
    assert response.headers["etag"] == f'"{row.sha256}"'
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"


async def test_a_matching_if_none_match_is_304_without_a_body(
    db: Db, api: httpx.AsyncClient, sim: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    """The ETag (also weak, or in a list, or `*`) answers 304; another tag gets the bytes."""
    task_id = await stored_task(db, sim, http)
    url = f"/v1/tasks/{task_id}/results/0"
    etag = (await api.get(url)).headers["etag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await api.get(url, headers={"If-None-Match": value})
        assert (response.status_code, response.content) == (304, b""), value
        assert response.headers["etag"] == etag
    assert (await api.get(url, headers={"If-None-Match": '"other"'})).status_code == 200


async def test_a_pending_result_is_409_with_retry_after(
    db: Db, api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """A result not copied yet is a conflict the client may retry shortly."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 409
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
    assert "not stored yet" in response.json()["detail"]


async def test_a_failed_result_is_410_with_its_reason(
    db: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
) -> None:
    """A result that could not be copied is gone, and the problem says why."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    await run(db, storage, http, task_id, max_bytes=100)
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 410
    assert response.json()["detail"].startswith("the image is larger than 100 bytes")


async def test_unknown_results_and_other_clients_tasks_are_404(
    db: Db,
    api: httpx.AsyncClient,
    beta_api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    """No such index, a malformed path, or a task of another client: all plain 404s."""
    task_id = await stored_task(db, sim, http)
    for path in (
        f"/v1/tasks/{task_id}/results/1",
        f"/v1/tasks/{task_id}/results/abc",
        f"/v1/tasks/{task_id}/results/-1",
        f"/v1/tasks/{task_id}/results/99999999999999999999",
        f"/v1/tasks/{uuid.uuid4()}/results/0",
        "/v1/tasks/not-a-uuid/results/0",
    ):
        assert (await api.get(path)).status_code == 404, path
    assert (await beta_api.get(f"/v1/tasks/{task_id}/results/0")).status_code == 404


async def test_an_unreadable_stored_image_is_503(
    db: Db, api: httpx.AsyncClient, sim: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    """When the store cannot produce the bytes, the answer is a problem, not a broken body."""
    task_id = await stored_task(db, sim, http)
    [row] = await rows_of(db, task_id)
    (Path(db.resources.storage.url) / (row.storage_key or "")).unlink()
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
