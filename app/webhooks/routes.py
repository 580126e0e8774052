"""Where callers are told: webhook endpoints, the client's signing secret, the delivery log
and replay. Each route takes the request's transaction (`SessionDep`) and calls the service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.deps import NOT_FOUND, PROBLEM, CallerDep, ResourcesDep, SessionDep, parse_task_id
from app.models import WebhookAttempt, WebhookEndpoint
from app.models import WebhookMessage as Message
from app.vocabulary import MessageStatus
from app.webhooks import service
from app.webhooks.schemas import (
    AttemptRead,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointRead,
    EndpointUpdate,
    MessageList,
    MessagePage,
    MessageRead,
    RecoverAccepted,
    RecoverBody,
    SecretRead,
)

router = APIRouter(tags=["webhooks"])

ENDPOINTS = "/v1/webhook-endpoints"
Responses = dict[int | str, dict[str, Any]]
NO_ENDPOINT: Responses = {404: {"description": "No such endpoint for this client.", **PROBLEM}}
REFUSED: Responses = {
    422: {"description": "The URL breaks the rule (or another problem).", **PROBLEM}
}
DISABLED: Responses = {409: {"description": "The endpoint is disabled.", **PROBLEM}}


def _endpoint(endpoint: WebhookEndpoint) -> EndpointRead:
    return EndpointRead.model_validate(endpoint, from_attributes=True)


def _message(pair: tuple[Message, list[WebhookAttempt]]) -> MessageRead:
    message, attempts = pair
    return MessageRead(
        id=message.id,
        task_id=message.task_id,
        type=message.type,
        endpoint_id=message.endpoint_id,
        url=message.url,
        status=message.status,
        created_at=message.created_at,
        next_attempt_at=message.next_attempt_at
        if message.status == MessageStatus.PENDING
        else None,
        delivered_at=message.delivered_at,
        last_error=message.last_error,
        attempts=[AttemptRead.model_validate(a, from_attributes=True) for a in attempts],
    )


@router.post(
    ENDPOINTS,
    status_code=201,
    summary="Register a webhook endpoint",
    description="Answers the endpoint with its signing `secret`, shown only this once.",
    responses=REFUSED,
)
async def create_endpoint(
    body: EndpointCreate, caller: CallerDep, session: SessionDep, resources: ResourcesDep
) -> EndpointCreated:
    endpoint = await service.create_endpoint(session, caller, body, resources.settings)
    return EndpointCreated.model_validate(endpoint, from_attributes=True)


@router.get(ENDPOINTS, summary="List the client's webhook endpoints")
async def list_endpoints(caller: CallerDep, session: SessionDep) -> EndpointList:
    endpoints = await service.list_endpoints(session, caller)
    return EndpointList(items=[_endpoint(e) for e in endpoints])


@router.get(ENDPOINTS + "/{endpoint_id}", summary="Get a webhook endpoint", responses=NO_ENDPOINT)
async def get_endpoint(endpoint_id: str, caller: CallerDep, session: SessionDep) -> EndpointRead:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    return _endpoint(await service.get_endpoint(session, caller, parsed))


@router.patch(
    ENDPOINTS + "/{endpoint_id}",
    summary="Change a webhook endpoint",
    description="`enabled: true` re-enables a disabled endpoint and clears its reason.",
    responses={**NO_ENDPOINT, **REFUSED},
)
async def update_endpoint(
    endpoint_id: str,
    body: EndpointUpdate,
    caller: CallerDep,
    session: SessionDep,
    resources: ResourcesDep,
) -> EndpointRead:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    endpoint = await service.update_endpoint(session, caller, parsed, body, resources.settings)
    return _endpoint(endpoint)


@router.delete(
    ENDPOINTS + "/{endpoint_id}",
    status_code=204,
    summary="Delete a webhook endpoint and its messages",
    responses=NO_ENDPOINT,
)
async def delete_endpoint(endpoint_id: str, caller: CallerDep, session: SessionDep) -> Response:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    await service.delete_endpoint(session, caller, parsed)
    return Response(status_code=204)


@router.post(
    ENDPOINTS + "/{endpoint_id}/rotate-secret",
    summary="Give an endpoint a new signing secret",
    description=(
        "The new secret is shown only now. The old one keeps signing alongside it for 24 h: "
        "`webhook-signature` carries both meanwhile."
    ),
    responses=NO_ENDPOINT,
)
async def rotate_endpoint_secret(
    endpoint_id: str, caller: CallerDep, session: SessionDep
) -> SecretRead:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    return SecretRead(secret=await service.rotate_endpoint_secret(session, caller, parsed))


@router.get(
    ENDPOINTS + "/{endpoint_id}/messages",
    summary="An endpoint's messages, newest first, with every attempt",
    responses=NO_ENDPOINT,
)
async def list_endpoint_messages(
    endpoint_id: str,
    caller: CallerDep,
    session: SessionDep,
    status: Annotated[
        MessageStatus | None, Query(description="Only messages in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> MessagePage:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    pairs, next_cursor = await service.endpoint_messages(
        session, caller, parsed, status=status, limit=limit, cursor=cursor
    )
    return MessagePage(items=[_message(pair) for pair in pairs], next_cursor=next_cursor)


@router.post(
    ENDPOINTS + "/{endpoint_id}/recover",
    status_code=202,
    summary="Redeliver every failed message since a time",
    description="Done by a background job; each message keeps its `webhook-id`.",
    responses={**NO_ENDPOINT, **DISABLED},
)
async def recover_endpoint(
    endpoint_id: str, body: RecoverBody, caller: CallerDep, session: SessionDep
) -> RecoverAccepted:
    parsed = service.parse_id(endpoint_id, "webhook endpoint")
    await service.recover(session, caller, parsed, body.since)
    return RecoverAccepted(endpoint_id=parsed, since=body.since)


@router.post(
    "/v1/webhook-messages/{message_id}/redeliver",
    status_code=202,
    summary="Send a message again, with the same webhook-id and body",
    responses={
        404: {"description": "No such message for this client.", **PROBLEM},
        409: {"description": "Still being delivered, or its endpoint is disabled.", **PROBLEM},
    },
)
async def redeliver_message(message_id: str, caller: CallerDep, session: SessionDep) -> MessageRead:
    parsed = service.parse_id(message_id, "webhook message")
    return _message(await service.redeliver(session, caller, parsed))


@router.get(
    "/v1/webhook-secret",
    summary="The client's signing secret, for its tasks' own webhook_url",
    description="Made on first use.",
)
async def get_webhook_secret(caller: CallerDep, session: SessionDep) -> SecretRead:
    return SecretRead(secret=await service.get_client_secret(session, caller))


@router.post(
    "/v1/webhook-secret/rotate",
    summary="Give the client a new signing secret",
    description="The old one keeps signing alongside the new one for 24 h.",
)
async def rotate_webhook_secret(caller: CallerDep, session: SessionDep) -> SecretRead:
    return SecretRead(secret=await service.rotate_client_secret(session, caller))


@router.get(
    "/v1/tasks/{task_id}/webhooks",
    summary="A task's webhook messages, with every attempt",
    responses=NOT_FOUND,
)
async def list_task_webhooks(task_id: str, caller: CallerDep, session: SessionDep) -> MessageList:
    pairs = await service.task_messages(session, caller, parse_task_id(task_id))
    return MessageList(items=[_message(pair) for pair in pairs])
