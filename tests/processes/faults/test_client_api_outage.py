"""The client API against a real `edithook serve` whose database goes away, and what it logs.

The process logs JSON (its default): every line of its output is parsed, and the lines of one
request are found by the request id it answered with.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg

from tests.helpers import VALID_EDIT
from tests.processes.faults.fault_stack import Launcher, Proc, StackFactory
from tests.processes.faults.tcp_proxy import TcpProxy, proxied_url, upstream_of

# Client content that must never reach a log line.
MARKER = "marker-prompt-5b1f0c2e"
MARKED_EDIT = {**VALID_EDIT, "prompt": f"{MARKER} make it snow", "metadata": {"m": MARKER}}
LOG_FIELDS = {"time", "level", "logger", "message", "request_id"}

REFUSE_INSERTS = """
CREATE FUNCTION refuse_task_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'inserts refused for this test'; END $$;
CREATE TRIGGER refuse_task_inserts BEFORE INSERT ON tasks
FOR EACH ROW EXECUTE FUNCTION refuse_task_inserts();
"""
ALLOW_INSERTS = "DROP FUNCTION IF EXISTS refuse_task_inserts() CASCADE"


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as one JSON object."""
    lines = [line for line in proc.log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(record, dict), line
        assert record.keys() >= LOG_FIELDS - {"request_id"}, line
        parsed.append(record)
    return parsed


def lines_of(proc: Proc, request_id: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(proc) if line.get("request_id") == request_id]


def errors_of(proc: Proc, request_id: str) -> list[dict[str, Any]]:
    return [line for line in lines_of(proc, request_id) if line["level"] in ("warning", "error")]


async def test_every_client_route_answers_503_with_retry_after_while_the_database_is_down(
    db: str, stack: StackFactory, simulator_with: Any, launcher: Launcher
) -> None:
    """With Postgres refusing connections each client route answers a 503 problem with
    Retry-After, and logs one line without a traceback or the request's content."""
    sim = await simulator_with()
    proxy = TcpProxy(upstream_of(db))
    await proxy.start()
    try:
        deployment = stack(sim.url, database_url=proxied_url(db, proxy.port))
        proc = await deployment.serve()
        async with deployment.api() as api:
            created = await api.post("/v1/tasks", json=VALID_EDIT)
            assert created.status_code == 202, created.text
            task_id = created.json()["id"]

            await proxy.go_down()
            calls = [
                ("GET", "/v1/tasks", None),
                ("POST", "/v1/tasks", MARKED_EDIT),
                ("GET", f"/v1/tasks/{task_id}", None),
                ("GET", f"/v1/tasks/{task_id}/results", None),
                ("GET", f"/v1/tasks/{task_id}/events", None),
                ("POST", f"/v1/tasks/{task_id}/refresh", None),
            ]
            answered = []
            for method, path, body in calls:
                response = await api.request(method, path, json=body)
                assert response.status_code == 503, (method, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["status"] == 503
                answered.append((path, response.headers["x-request-id"]))

            await proxy.come_back()
            again = await api.get(f"/v1/tasks/{task_id}")
            assert again.status_code == 200, again.text

        for path, request_id in answered:
            errors = errors_of(proc, request_id)
            assert len(errors) == 1, (path, errors)
            assert "exception" not in errors[0], errors[0]
            assert "Traceback" not in json.dumps(errors[0])
        assert MARKER not in proc.log.read_text()
    finally:
        if not proxy.up:
            await proxy.come_back()
        await launcher.stop_all()
        await proxy.close()


async def test_a_failing_statement_is_logged_without_the_requests_content(
    db: str, stack: StackFactory, simulator_with: Any, launcher: Launcher
) -> None:
    """A 500 logs the error's type, the request id and where; never the SQL parameters."""
    sim = await simulator_with()
    deployment = stack(sim.url)
    proc = await deployment.serve()
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as admin:
        await admin.execute(REFUSE_INSERTS)
    try:
        async with deployment.api() as api:
            response = await api.post("/v1/tasks", json=MARKED_EDIT)
        assert response.status_code == 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        request_id = response.headers["x-request-id"]
    finally:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as admin:
            await admin.execute(ALLOW_INSERTS)
    errors = errors_of(proc, request_id)
    assert len(errors) == 1, errors
    assert "RaiseException" in errors[0]["message"], errors[0]
    assert "POST /v1/tasks" in errors[0]["message"], errors[0]
    assert MARKER not in proc.log.read_text()


async def test_serve_and_worker_log_json_lines_with_the_request_id_client_and_task(
    db: str, stack: StackFactory, simulator_with: Any, launcher: Launcher
) -> None:
    """Each line is one JSON object; a task request's lines carry its request id, client and
    task id, a job's lines its task id; the caller's X-Request-ID is kept, or one is made."""
    sim = await simulator_with()
    deployment = stack(sim.url)
    serve = await deployment.serve()
    worker = await deployment.worker()
    mine = uuid.uuid4().hex
    async with deployment.api() as api:
        created = await api.post("/v1/tasks", json=VALID_EDIT, headers={"X-Request-ID": mine})
        assert created.status_code == 202, created.text
        assert created.headers["x-request-id"] == mine
        task_id = created.json()["id"]
        fetched = await api.get(f"/v1/tasks/{task_id}")
        made = fetched.headers["x-request-id"]
        assert made
        assert made != mine
    async with httpx.AsyncClient(base_url=deployment.public_url) as anonymous:
        assert (await anonymous.get("/healthz")).headers["x-request-id"]
    await deployment.wait_for_status(task_id, {"completed"})
    await launcher.stop_all()

    for request_id in (mine, made):
        lines = lines_of(serve, request_id)
        assert lines, request_id
        for line in lines:
            assert line.keys() >= LOG_FIELDS, line
            assert line["client"] == "alpha", line
            assert line["task_id"] == task_id, line
    assert any(line.get("task_id") == task_id for line in log_lines(worker))
