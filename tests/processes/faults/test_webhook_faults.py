"""A webhook delivery survives its worker being killed mid-POST: real processes, a real
receiver, every delivery verified with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import psycopg
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook

from tests.processes.faults.fault_stack import Launcher, StackFactory, query
from tests.processes.faults.test_faults import (
    SWEEP_NOW,
    Servers,
    SimulatorFactory,
    create_task,
)


@dataclass
class HoldingReceiver:
    """Holds the first POST until released; answers every later one 200 at once."""

    requests: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.requests.append((await request.body(), dict(request.headers)))
            if len(self.requests) == 1:
                self.held.set()
                await self.released.wait()
            return Response(status_code=204)

        return app


async def test_a_worker_killed_mid_delivery_is_replaced_and_the_message_arrives_again(
    db: str,
    stack: StackFactory,
    simulator_with: SimulatorFactory,
    servers: Servers,
    launcher: Launcher,
) -> None:
    """SIGKILL while the receiver holds the POST: a new worker delivers it, same webhook-id."""
    receiver = HoldingReceiver()
    receiver_server = await servers(receiver.build())
    sim = await simulator_with()
    deployment = stack(sim.url)
    await deployment.serve()
    doomed = await deployment.worker()
    async with deployment.api() as api:
        answer = await api.post(
            "/v1/webhook-endpoints",
            json={"url": receiver_server.url + "/hook", "event_types": ["task.succeeded"]},
        )
    assert answer.status_code == 201, answer.text
    secret = answer.json()["secret"]
    await create_task(deployment)

    await asyncio.wait_for(receiver.held.wait(), 30)
    try:
        jobs = await query(
            db,
            "SELECT status, worker_id FROM procrastinate_jobs WHERE task_name = 'deliver_webhook'",
        )
        assert [j["status"] for j in jobs] == ["doing"]
        assert jobs[0]["worker_id"] in doomed.worker_ids
        await launcher.kill(doomed)
    finally:
        receiver.released.set()  # a held request would keep its server from stopping

    # Stand-ins for time, as in the download test: the dead worker's heartbeat is made old
    # and the sweeper runs now, so its job runs again on the new worker.
    await query(
        db,
        "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
        " WHERE id = ANY(%s)",
        list(doomed.worker_ids),
    )
    await deployment.worker()
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # a sweep is queued already
        await query(db, SWEEP_NOW)

    async def delivered() -> bool:
        rows = await query(db, "SELECT status FROM webhook_messages")
        return [row["status"] for row in rows] == ["delivered"]

    await deployment.wait_until(delivered, "the message to be delivered", within=60)
    assert len(receiver.requests) == 2
    first, second = receiver.requests
    assert first[1]["webhook-id"] == second[1]["webhook-id"]
    assert first[0] == second[0]
    for body, headers in receiver.requests:
        Webhook(secret).verify(body, headers)
