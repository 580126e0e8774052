"""The webhook jobs: delivering one message, recovering an endpoint's failed messages, and
finding pending messages whose job was lost; and their Blueprint.

`app.worker` adds `blueprint()` to the worker's procrastinate App; nothing else runs them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import procrastinate
import structlog

from app.db import transaction
from app.jobs import (
    DELIVER_WEBHOOK,
    RECOVER_WEBHOOKS,
    SWEEP_WEBHOOKS,
    WEBHOOK_QUEUE,
    JobRetry,
    RetryLater,
    resources_of,
)
from app.resources import Resources
from app.webhooks import service
from app.webhooks.delivery import Config, deliver
from app.webhooks.targets import rule_of


def config_of(resources: Resources) -> Config:
    settings = resources.settings
    return Config(
        rule=rule_of(settings),
        schedule=settings.webhook_schedule,
        timeout=settings.webhook_timeout_seconds,
    )


async def deliver_webhook_job(context: procrastinate.JobContext, message_id: str) -> None:
    structlog.contextvars.bind_contextvars(webhook_message_id=message_id)
    resources = resources_of(context)
    delay = await deliver(
        resources.sessions, resources.download_http, config_of(resources), uuid.UUID(message_id)
    )
    if delay is not None:
        raise RetryLater("the webhook was not delivered; trying again", delay)


async def recover_webhooks_job(
    context: procrastinate.JobContext, endpoint_id: str, since: str
) -> None:
    resources = resources_of(context)
    async with transaction(resources.sessions) as session:
        await service.redeliver_failed(
            session, uuid.UUID(endpoint_id), datetime.fromisoformat(since)
        )


async def sweep_webhooks_job(context: procrastinate.JobContext, timestamp: int) -> None:
    resources = resources_of(context)
    async with transaction(resources.sessions) as session:
        await service.requeue_lost(session)


def blueprint() -> procrastinate.Blueprint:
    """The webhook jobs on a Blueprint of their own; a new one per call (see app.tasks.jobs)."""
    jobs = procrastinate.Blueprint()
    jobs.task(name=DELIVER_WEBHOOK, queue=WEBHOOK_QUEUE, pass_context=True, retry=JobRetry())(
        deliver_webhook_job
    )
    jobs.task(name=RECOVER_WEBHOOKS, pass_context=True, retry=JobRetry())(recover_webhooks_job)
    task = jobs.task(name=SWEEP_WEBHOOKS, pass_context=True, queueing_lock=SWEEP_WEBHOOKS)(
        sweep_webhooks_job
    )
    jobs.periodic(cron="* * * * * */30")(task)
    return jobs
