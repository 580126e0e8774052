"""What `POST /v1/images/edits` does between the wire and the task: the form made into an
ordinary task, and a settled task made into OpenAI's answer or OpenAI's error.

Functions that take a session never commit or begin: the route's named flow owns the
transactions (`app.openai.routes`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ProblemError
from app.models import Task, TaskResult
from app.openai.errors import NO_RETRY, SERVER_ERROR, OpenAIError, from_validation
from app.openai.schemas import (
    DEFAULT_ONLY,
    EDITHOOK_FIELDS,
    IMAGES_MAX,
    MODEL,
    OPENAI_FIELDS,
    ImageData,
    ImagesResponse,
    ResponseFormat,
)
from app.results import service as results_service
from app.results.links import ResultLinks
from app.results.storage import ResultStorage, StorageError
from app.settings import Settings
from app.tasks.schemas import TaskCreate
from app.tasks.service import TaskView
from app.uploads.service import accept_upload
from app.vocabulary import ResultStatus, TaskStatus

TASK_HEADER = "Edithook-Task-Id"
# Metadata keys the OpenAI fields naming the end user are kept under.
USER_KEYS = ("user",)

# Task failures caused by what was asked: the caller's to fix, so 400 (OpenAI's status for
# a refused request), never retried by the SDK.
CONTENT_POLICY = "content_policy_violation"
REQUEST_FAILURES = {
    CONTENT_POLICY: None,
    "invalid_parameters": None,
    "image_processing_error": "image",
    "image_dimension_mismatch": "image",
}


def check_fields(names: Sequence[str], values: Mapping[str, Sequence[Any]]) -> None:
    """Refuse any field edithook does not read, and OpenAI's unsupported ones unless at
    their default: a silently ignored `mask` or `stream` would answer something else."""
    for name in names:
        if name in OPENAI_FIELDS or name in EDITHOOK_FIELDS:
            continue
        allowed = DEFAULT_ONLY.get(name)
        if allowed is None:
            raise OpenAIError(
                400,
                f"Unknown parameter: '{name}'. edithook reads "
                + ", ".join(sorted(OPENAI_FIELDS | EDITHOOK_FIELDS))
                + ".",
                param=name,
                code="unknown_parameter",
            )
        given = {str(value).strip().lower() for value in values.get(name, ())}
        if not given <= allowed:
            raise OpenAIError(
                400,
                f"Unsupported value for '{name}': edithook supports only "
                + " or ".join(f"'{value}'" for value in sorted(allowed))
                + ".",
                param=name,
                code="unsupported_value",
            )


def check_model(model: str | None) -> None:
    if model is not None and model != MODEL:
        raise OpenAIError(
            400,
            f"Invalid value for 'model': {model!r}. The only model is '{MODEL}'.",
            param="model",
            code="invalid_value",
        )


def check_image_count(count: int) -> None:
    if count == 0:
        raise OpenAIError(
            400,
            "Missing required parameter: 'image'.",
            param="image",
            code="missing_required_parameter",
        )
    if count > IMAGES_MAX:
        raise OpenAIError(
            400,
            f"Too many images: {count}; at most {IMAGES_MAX}.",
            param="image",
            code="invalid_value",
        )


def task_create(fields: dict[str, Any], image_count: int) -> TaskCreate:
    """The task the form asks for, validated as `POST /v1/tasks` validates one; its
    `image_ids` are placeholders until the images are stored (`with_uploads`)."""
    size = fields.get("size")
    user = fields.pop("user", None)
    values = {key: value for key, value in fields.items() if value is not None}
    if size in (None, "auto"):
        values.pop("size", None)
    if user is not None:
        values["metadata"] = {"user": user}
    values["image_ids"] = [uuid.uuid4() for _ in range(image_count)]
    try:
        return TaskCreate.model_validate(values)
    except ValidationError as exc:
        raise from_validation(list(exc.errors())) from None


async def store_images(
    session: AsyncSession,
    storage: ResultStorage,
    client: str,
    images: Sequence[tuple[bytes, str | None]],
    *,
    settings: Settings,
) -> list[uuid.UUID]:
    """Each image accepted as an upload of `client`, in order; a refused one is a 400
    naming `image` (a 413 over the upload limit)."""
    ids = []
    for position, (data, declared_type) in enumerate(images):
        try:
            upload = await accept_upload(
                session, storage, client, data, declared_type, settings=settings
            )
        except ProblemError as exc:
            if exc.status >= 500:
                raise
            status = 413 if exc.status == 413 else 400
            message = exc.detail or exc.title
            if len(images) > 1:
                message = f"Image {position + 1} of {len(images)}: {message}"
            raise OpenAIError(
                status, message, param="image", code=exc.slug.replace("-", "_")
            ) from None
        ids.append(upload.id)
    return ids


def with_uploads(body: TaskCreate, upload_ids: list[uuid.UUID]) -> TaskCreate:
    return body.model_copy(update={"image_ids": upload_ids})


def failure(view: TaskView) -> OpenAIError | None:
    """The error a settled task answers with, or None when it has images to show."""
    task = view.task
    headers = {TASK_HEADER: str(task.id)}
    code = task.error_code
    reason = task.error_message or code or "no reason given"
    if task.status == TaskStatus.FAILED:
        if code in REQUEST_FAILURES:
            return OpenAIError(
                400,
                f"Task {task.id} failed: {reason}",
                param=REQUEST_FAILURES[code],
                code=code,
                headers=headers,
            )
        return OpenAIError(
            500,
            f"Task {task.id} failed: {reason}",
            type=SERVER_ERROR,
            code=code or "task_failed",
            headers=headers,
        )
    if task.status == TaskStatus.CANCELLED:
        return OpenAIError(
            500,
            f"Task {task.id} was cancelled: {reason}",
            type=SERVER_ERROR,
            code=code or "task_cancelled",
            headers={**headers, **NO_RETRY},
        )
    return None


def timed_out(task: Task, seconds: float) -> OpenAIError:
    """The 504 of a wait that ran out: the task goes on, and is not to be sent again."""
    return OpenAIError(
        504,
        f"Task {task.id} has not finished after {seconds:g} s (it is {task.status}); it goes "
        f"on. Follow it with GET /v1/tasks/{task.id}; do not send the edit again.",
        type=SERVER_ERROR,
        code="wait_timeout",
        headers={TASK_HEADER: str(task.id), **NO_RETRY},
    )


async def stored_results(
    session: AsyncSession, client: str, task_id: uuid.UUID
) -> list[TaskResult]:
    """The task's results that are in storage, by index."""
    results = await results_service.list_results(session, client, task_id)
    return [r for r in results if r.status == ResultStatus.STORED and r.storage_key is not None]


async def answer(
    task: Task,
    results: Sequence[TaskResult],
    response_format: ResponseFormat,
    *,
    storage: ResultStorage,
    links: ResultLinks,
) -> ImagesResponse:
    """OpenAI's answer: a signed link or the bytes of each stored result."""
    headers = {TASK_HEADER: str(task.id)}
    if not results:
        raise OpenAIError(
            500,
            f"Task {task.id} completed but none of its images could be kept: "
            f"see GET /v1/tasks/{task.id}/results.",
            type=SERVER_ERROR,
            code="results_unavailable",
            headers={**headers, **NO_RETRY},
        )
    data = []
    for result in results:
        if response_format == ResponseFormat.URL:
            data.append(ImageData(url=await links.url(result)))
            continue
        try:
            raw = b"".join([chunk async for chunk in storage.read(result.storage_key or "")])
        except StorageError as exc:
            raise OpenAIError(
                503,
                f"The images of task {task.id} cannot be read right now; retry, or use "
                f"GET /v1/tasks/{task.id}/results.",
                type=SERVER_ERROR,
                code="unavailable",
                headers={**headers, **NO_RETRY},
            ) from exc
        data.append(ImageData(b64_json=base64.b64encode(raw).decode()))
    return ImagesResponse(created=int(task.created_at.timestamp()), data=data)
