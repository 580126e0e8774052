"""A provider that quotes our callback URL or token never makes the token show anywhere.

EvoLink (here the simulator, over real HTTP) answers a create, a poll or a task with an
error quoting the callback URL, percent-encoded or not, or the bare token; no form of the
token may reach the task, its events, or the log as the service's handler prints it.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.logs import RedactTokens
from app.security import callback_token
from tests.helpers import CALLBACK_SECRET, create_task, events, wait_for_task

QUOTING = (
    "callback_url {callback_url} was refused (as sent: {callback_url_encoded}); "
    "token {callback_token}"
)


def printed(caplog: pytest.LogCaptureFixture) -> str:
    """The log as the service prints it: app.logs's redaction applied, tracebacks included."""
    formatter = logging.Formatter("%(name)s: %(message)s")
    redaction = RedactTokens()
    lines = []
    for record in caplog.records:
        redaction.filter(record)
        lines.append(formatter.format(record))
    return "\n".join(lines)


def forms_of(token: str) -> list[str]:
    standard = token.replace("-", "+").replace("_", "/")
    return [token, standard, quote(standard, safe=""), token[:16], token[-16:]]


async def leaks(
    api: httpx.AsyncClient, task_id: str, caplog: pytest.LogCaptureFixture
) -> dict[str, list[str]]:
    """Where any form (or a long piece) of the task's token shows: task, events, log."""
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task_id))
    places = {
        "task": (await api.get(f"/v1/tasks/{task_id}")).text,
        "events": json.dumps(await events(api, task_id)),
        "log": printed(caplog),
    }
    return {
        place: found
        for place, text in places.items()
        if (found := [form for form in forms_of(token) if form in text])
    }


def everything_quoting(token: str, url: str) -> str:
    standard = token.replace("-", "+").replace("_", "/")
    return (
        f"callback {url} failed; sent as {quote(url, safe='')}; token {token}, padded "
        f"{token}=, in standard base64 {standard}= or {quote(standard + '=', safe='')}"
    )


@pytest.mark.parametrize(
    ("fault", "ends"),
    [
        ({"status": 400, "code": "invalid_request", "message": QUOTING}, "failed"),
        ({"status": 422, "body": f"<p>bad: {QUOTING}</p>", "content_type": "text/html"}, "failed"),
        ({"status": 503, "message": QUOTING, "retry_after": 0.1}, "completed"),
    ],
    ids=["a refused create", "an unreadable refusal", "a retryable create"],
)
async def test_a_create_error_quoting_the_callback_url_leaks_no_form_of_the_token(
    api: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, Any],
    ends: str,
) -> None:
    """The create's error is stored and logged with the token scrubbed."""
    caplog.set_level(logging.DEBUG)
    await sim.post("/_sim/faults", json={"endpoint": "create", **fault})
    task = await create_task(api)
    await wait_for_task(api, task["id"], {ends}, within=30)
    errors = [e for e in await events(api, task["id"]) if e["outcome"] in ("error", "applied")]
    assert any("[redacted]" in (e["detail"] or "") for e in errors)
    assert await leaks(api, task["id"], caplog) == {}


async def test_a_poll_error_quoting_the_token_leaks_no_form_of_it(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed poll's error is stored and logged with the token scrubbed, in every form."""
    caplog.set_level(logging.DEBUG)
    task = await create_task(api, prompt="quiet [sim:no-callback] [sim:hold]")
    await wait_for_task(api, task["id"], {"pending", "processing"})
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task["id"]))
    message = everything_quoting(token, "{callback_url}")
    await sim.post("/_sim/faults", json={"endpoint": "get", "status": 500, "message": message})
    await api.post(f"/v1/tasks/{task['id']}/refresh")
    polled = [e for e in await events(api, task["id"]) if e["kind"] == "poll"]
    assert polled
    assert "[redacted]" in polled[0]["detail"]
    assert await leaks(api, task["id"], caplog) == {}


async def test_a_task_failure_quoting_the_token_leaks_no_form_of_it(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider fails the task with an error quoting the token: its callback and a poll
    both store and show the error, and the bodies, scrubbed."""
    caplog.set_level(logging.DEBUG)
    task = await create_task(api, prompt="[sim:hold]")
    held = await wait_for_task(api, task["id"], {"pending", "processing"})
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task["id"]))
    record = (await sim.get(f"/_sim/tasks/{held['provider_task_id']}")).json()
    message = everything_quoting(token, record["request"]["callback_url"])
    await sim.post(
        f"/_sim/tasks/{held['provider_task_id']}/fail",
        json={"code": f"callback_{token}", "message": message},
    )
    failed = await wait_for_task(api, task["id"], {"failed"})
    assert "[redacted]" in failed["error"]["message"]
    assert failed["resolved_by"] == "callback"
    await api.post(f"/v1/tasks/{task['id']}/refresh")
    kinds = {e["kind"] for e in await events(api, task["id"]) if e["body"]}
    assert {"callback", "poll"} <= kinds
    assert await leaks(api, task["id"], caplog) == {}
