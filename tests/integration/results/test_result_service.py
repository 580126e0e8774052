"""Copying result images into our storage, confirmed first, and serving them back.

Most tasks here are created at the simulator and recorded as completed directly in the
database, so that no copy job exists and the test's own run is the only one; the forged
callback test goes through the API (and so the worker) on purpose. A test whose rows no other
connection needs to see runs in one transaction rolled back after it (`rolled_back`); one
read back by the API or a listener commits (`committed`), as the test's own client.
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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.evolink.client import EvoLinkClient
from app.models import Task, TaskEvent, TaskResult
from app.notify import TASK_CHANNEL
from app.results.service import EXPIRED, NOT_CONFIRMED, StoreReport, store_task_results
from app.results.storage import ResultStorage, StorageError
from app.security import callback_path, callback_token
from tests.conftest import Caller
from tests.helpers import CALLBACK_SECRET, create_task, wait_for_task

if TYPE_CHECKING:
    from tests.conftest import Service
    from tests.integration.results.conftest import ImageHost

MAX_BYTES = 10_000_000


async def completed_at_simulator(sim: httpx.AsyncClient, *, n: int = 1) -> dict[str, Any]:
    """A task created directly at the simulator and completed there at once; its task object."""
    response = await sim.post(
        "/v1/images/generations",
        json={
            "model": "qwen-image-edit-plus",
            "prompt": "Make the sky purple",
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
    """How a test reaches the database: the sessions its rows and runs use, the provider
    client, and the client whose tasks the rows are."""

    sessions: async_sessionmaker[AsyncSession]
    evolink: EvoLinkClient
    client: str


@pytest.fixture
async def rolled_back(service: Service, caller: Caller) -> AsyncIterator[Db]:
    """One transaction for the whole test, rolled back after it: each transaction the code
    under test commits is a savepoint in it, so nothing the test wrote stays."""
    async with service.resources.engine.connect() as connection:
        outer = await connection.begin()
        sessions = async_sessionmaker(
            connection,
            expire_on_commit=False,
            autoflush=False,
            join_transaction_mode="create_savepoint",
        )
        yield Db(sessions, service.resources.evolink, caller.name)
        await outer.rollback()


@pytest.fixture
def committed(service: Service, caller: Caller) -> Db:
    """The service's own sessions: what the test writes is committed, for the API to read."""
    return Db(service.resources.sessions, service.resources.evolink, caller.name)


async def record_completed(
    db: Db,
    provider_task: dict[str, Any],
    *,
    urls: list[str] | None = None,
    status: str = "completed",
) -> uuid.UUID:
    """Our task for `provider_task`, completed with `urls` (its real results by default)."""
    task_id = uuid.uuid4()
    recorded = provider_task.get("results", []) if urls is None else urls
    async with transaction(db.sessions) as session:
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
    return await store_task_results(
        db.sessions, db.evolink, storage, http, uuid.UUID(str(task_id)), **options
    )


async def rows_of(db: Db, task_id: uuid.UUID | str) -> list[TaskResult]:
    async with db.sessions() as session:
        found = await session.execute(
            select(TaskResult)
            .where(TaskResult.task_id == uuid.UUID(str(task_id)))
            .order_by(TaskResult.index)
        )
        return list(found.scalars())


async def events_of(db: Db, task_id: uuid.UUID | str) -> list[TaskEvent]:
    async with db.sessions() as session:
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
    committed: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    listener: psycopg.AsyncConnection[Any],
) -> None:
    """Each image is confirmed, downloaded, stored under its key and described in its row."""
    provider = await completed_at_simulator(sim, n=2)
    task_id = await record_completed(committed, provider)
    gets = (await stats(sim))["gets"]

    report = await run(committed, storage, http, task_id)

    assert report == StoreReport(stored=2, failed=0, pending=0, retry_in=None)
    assert (await stats(sim))["gets"] == gets + 1  # confirmed with the provider first
    for index, row in enumerate(await rows_of(committed, task_id)):
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
    assert [e.outcome for e in await events_of(committed, task_id)] == []  # success is quiet


async def test_a_second_run_stores_nothing_new(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Once every row is settled, a rerun neither asks the provider nor downloads."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim))
    assert (await run(rolled_back, storage, http, task_id)).stored == 1
    before_rows = [(r.status, r.stored_at) for r in await rows_of(rolled_back, task_id)]
    before = await stats(sim)

    assert await run(rolled_back, storage, http, task_id) == StoreReport()

    assert await stats(sim) == before
    assert [(r.status, r.stored_at) for r in await rows_of(rolled_back, task_id)] == before_rows


async def test_a_task_that_is_not_completed_is_left_alone(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """Only completed tasks have results to copy; nothing else is asked or fetched."""
    provider = await completed_at_simulator(sim)
    task_id = await record_completed(rolled_back, provider, status="processing")
    before = await stats(sim)
    assert await run(rolled_back, storage, http, task_id) == StoreReport()
    assert await run(rolled_back, storage, http, uuid.uuid4()) == StoreReport()
    assert await stats(sim) == before
    assert [r.status for r in await rows_of(rolled_back, task_id)] == ["pending"]


async def test_forged_result_urls_are_never_downloaded(
    committed: Db,
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
    early = await run(committed, storage, http, task["id"])
    assert (early.stored, early.pending, early.retry_in) == (0, 2, 30.0)
    assert [r.status for r in await rows_of(committed, task["id"])] == ["pending", "pending"]
    await run(committed, storage, http, task["id"])  # the same situation: no second event
    polls = [e for e in await events_of(committed, task["id"]) if e.kind == "poll"]
    assert [(e.outcome, e.provider_status) for e in polls] == [("anomaly", "processing")]

    await sim.post(f"/_sim/tasks/{task['provider_task_id']}/complete")
    await run(committed, storage, http, task["id"])

    first, second = await rows_of(committed, task["id"])
    real = (await sim.get(f"/v1/tasks/{task['provider_task_id']}")).json()["results"]
    assert (first.status, first.provider_url) == ("stored", real[0])
    assert (second.status, second.error) == ("failed", NOT_CONFIRMED)
    assert host.seen == []
    anomalies = [e for e in await events_of(committed, task["id"]) if e.outcome == "anomaly"]
    assert anomalies
    assert all(e.kind == "poll" for e in anomalies)
    assert any("replaced by the confirmed URL" in (e.detail or "") for e in anomalies)
    assert any(real[0] in (e.body or "") for e in anomalies)


async def test_missing_rows_are_added_from_the_confirmed_list(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A completion recorded without URLs gets the provider's results, stored."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim, n=2), urls=[])
    report = await run(rolled_back, storage, http, task_id)
    assert (report.stored, report.failed) == (2, 0)
    assert [r.status for r in await rows_of(rolled_back, task_id)] == ["stored", "stored"]
    [event] = await events_of(rolled_back, task_id)
    assert (event.kind, event.outcome) == ("poll", "anomaly")
    assert "result 1 added" in (event.detail or "")


async def test_a_storage_failure_leaves_the_row_pending_until_a_rerun(
    rolled_back: Db, sim: httpx.AsyncClient, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The row stays pending with the reason shown and a retry asked for; the next run stores."""
    flaky = FlakyStorage(str(tmp_path / "flaky"), failures=1)
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim))

    first = await run(rolled_back, flaky, http, task_id)
    assert first == StoreReport(stored=0, failed=0, pending=1, retry_in=5.0)
    [row] = await rows_of(rolled_back, task_id)
    assert row.status == "pending"
    assert "the bucket is unreachable" in (row.error or "")

    assert (await run(rolled_back, flaky, http, task_id)).stored == 1
    [row] = await rows_of(rolled_back, task_id)
    assert (row.status, row.error) == ("stored", None)
    assert flaky.puts == 2


async def test_a_link_that_cannot_be_fetched_fails_once_it_expired(
    committed: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    listener: psycopg.AsyncConnection[Any],
) -> None:
    """Before expiry a download error means retry; after it, the row fails with the reason."""
    task_id = await record_completed(committed, await completed_at_simulator(sim))
    async with httpx.AsyncClient(transport=httpx.MockTransport(unreachable)) as broken:
        early = await run(committed, storage, broken, task_id)
        assert (early.pending, early.retry_in is not None) == (1, True)
        [row] = await rows_of(committed, task_id)
        assert row.status == "pending"
        assert "connection refused" in (row.error or "")

        late = await run(committed, storage, broken, task_id, link_ttl=timedelta(0))

    assert late == StoreReport(stored=0, failed=1, pending=0, retry_in=None)
    [row] = await rows_of(committed, task_id)
    assert row.status == "failed"
    assert (row.error or "").startswith(f"{EXPIRED}: ")
    assert "connection refused" in (row.error or "")
    [event] = await events_of(committed, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")
    assert await notified(listener, task_id) == 1


async def test_a_permanent_download_failure_fails_the_row_and_is_recorded(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """An image over the size limit is failed at once, with an error event saying why."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim))
    report = await run(rolled_back, storage, http, task_id, max_bytes=100)
    assert report == StoreReport(stored=0, failed=1, pending=0, retry_in=None)
    [row] = await rows_of(rolled_back, task_id)
    assert row.status == "failed"
    assert (row.error or "").startswith("the image is larger than 100 bytes")
    [event] = await events_of(rolled_back, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")
    assert "result 0" in (event.detail or "")


async def test_a_confirmation_listing_more_results_than_n_confirms_nothing(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A confirming GET listing more results than the task may have (here 20,000 for at most
    6) adds no rows and fetches nothing; the pending rows fail with the counts."""
    provider = await completed_at_simulator(sim, n=2)
    task_id = await record_completed(rolled_back, provider)
    answer = {**provider, "results": [f"https://f.example/{i}.png" for i in range(20_000)]}
    await sim.post(
        "/_sim/faults", json={"endpoint": "get", "status": 200, "body": json.dumps(answer)}
    )
    downloads = (await stats(sim))["file_downloads"]

    report = await run(rolled_back, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=2, pending=0, retry_in=None)
    assert (await stats(sim))["file_downloads"] == downloads
    rows = await rows_of(rolled_back, task_id)
    assert [row.status for row in rows] == ["failed", "failed"]
    assert all("20000 results" in (row.error or "") for row in rows)


async def test_a_confirmation_error_quoting_the_callback_token_keeps_none_of_it(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """The confirming GET's error, kept on the rows and in an event, has the token scrubbed."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim))
    token = callback_token(CALLBACK_SECRET, task_id)
    message = f"callback {callback_path(task_id, token)} and {token} are unknown"
    await sim.post("/_sim/faults", json={"endpoint": "get", "status": 404, "message": message})

    await run(rolled_back, storage, http, task_id, callback_token=token)

    [row] = await rows_of(rolled_back, task_id)
    [event] = await events_of(rolled_back, task_id)
    assert "[redacted]" in (row.error or "")
    for text in (row.error or "", event.detail or ""):
        assert token[:16] not in text


async def test_a_provider_that_forgot_the_task_fails_the_pending_rows(
    rolled_back: Db, sim: httpx.AsyncClient, storage: ResultStorage, http: httpx.AsyncClient
) -> None:
    """A permanent answer to the confirming GET fails every pending row; nothing is fetched."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim, n=2))
    await sim.post("/_sim/faults", json={"endpoint": "get", "status": 404})
    downloads = (await stats(sim))["file_downloads"]

    report = await run(rolled_back, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=2, pending=0, retry_in=None)
    assert (await stats(sim))["file_downloads"] == downloads
    for row in await rows_of(rolled_back, task_id):
        assert row.status == "failed"
        assert "could not confirm" in (row.error or "")
    [event] = await events_of(rolled_back, task_id)
    assert (event.kind, event.outcome) == ("storage", "error")


@pytest.mark.parametrize(
    ("fault", "retry_in"),
    [({"status": 503, "retry_after": 7}, 7.0), ({"status": 401}, 300.0)],
    ids=["outage", "our-key-refused"],
)
async def test_a_provider_that_cannot_answer_now_gets_asked_again_later(
    rolled_back: Db,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    fault: dict[str, Any],
    retry_in: float,
) -> None:
    """An outage, or a refusal of our own key, keeps rows pending and fetches nothing."""
    task_id = await record_completed(rolled_back, await completed_at_simulator(sim))
    await sim.post("/_sim/faults", json={"endpoint": "get", **fault})
    downloads = (await stats(sim))["file_downloads"]

    report = await run(rolled_back, storage, http, task_id)

    assert report == StoreReport(stored=0, failed=0, pending=1, retry_in=retry_in)
    assert (await stats(sim))["file_downloads"] == downloads
    [row] = await rows_of(rolled_back, task_id)
    assert row.status == "pending"
    assert "could not ask the provider" in (row.error or "")


# -- GET /v1/tasks/{task_id}/results/{index} ---------------------------------------------------


async def stored_task(
    db: Db, storage: ResultStorage, sim: httpx.AsyncClient, http: httpx.AsyncClient
) -> str:
    """A task whose one result is stored in `storage` (the service's own); its id."""
    task_id = await record_completed(db, await completed_at_simulator(sim))
    report = await run(db, storage, http, task_id)
    assert report.stored == 1
    return str(task_id)


async def test_a_stored_image_is_served_with_its_etag(
    service: Service,
    committed: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    """The bytes come from our storage, with type, length, ETag and long-lived caching."""
    task_id = await stored_task(committed, service.resources.storage, sim, http)
    [row] = await rows_of(committed, task_id)
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 200
    assert response.content == await stored_bytes(service.resources.storage, row.storage_key or "")
    assert hashlib.sha256(response.content).hexdigest() == row.sha256
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(row.size_bytes)
    assert response.headers["etag"] == f'"{row.sha256}"'
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"


async def test_a_matching_if_none_match_is_304_without_a_body(
    service: Service,
    committed: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    """The ETag (also weak, or in a list, or `*`) answers 304; another tag gets the bytes."""
    task_id = await stored_task(committed, service.resources.storage, sim, http)
    url = f"/v1/tasks/{task_id}/results/0"
    etag = (await api.get(url)).headers["etag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await api.get(url, headers={"If-None-Match": value})
        assert (response.status_code, response.content) == (304, b""), value
        assert response.headers["etag"] == etag
    assert (await api.get(url, headers={"If-None-Match": '"other"'})).status_code == 200


async def test_a_pending_result_is_409_with_retry_after(
    committed: Db, api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """A result not copied yet is a conflict the client may retry shortly."""
    task_id = await record_completed(committed, await completed_at_simulator(sim))
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 409
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
    assert "not stored yet" in response.json()["detail"]


async def test_a_failed_result_is_410_with_its_reason(
    committed: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
) -> None:
    """A result that could not be copied is gone, and the problem says why."""
    task_id = await record_completed(committed, await completed_at_simulator(sim))
    await run(committed, storage, http, task_id, max_bytes=100)
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 410
    assert response.json()["detail"].startswith("the image is larger than 100 bytes")


async def test_unknown_results_and_other_clients_tasks_are_404(
    service: Service,
    committed: Db,
    api: httpx.AsyncClient,
    beta_api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    """No such index, a malformed path, or a task of another client: all plain 404s."""
    task_id = await stored_task(committed, service.resources.storage, sim, http)
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
    service: Service,
    committed: Db,
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    """When the store cannot produce the bytes, the answer is a problem, not a broken body."""
    task_id = await stored_task(committed, service.resources.storage, sim, http)
    [row] = await rows_of(committed, task_id)
    (Path(service.resources.storage.url) / (row.storage_key or "")).unlink()
    response = await api.get(f"/v1/tasks/{task_id}/results/0")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
