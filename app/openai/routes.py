"""`POST /v1/images/edits`: the edit in the shape of OpenAI's Images API, for its SDKs.

It authenticates with the same client keys, stores each image as an upload of the caller,
creates an ordinary task through `app.tasks.service.create_task` (listed, with its events and
webhooks; `Edithook-Task-Id` names it), waits until the task is settled or
`EDITHOOK_OPENAI_WAIT_SECONDS` pass, and answers `{"created", "data"}` with a signed `url`
or the `b64_json` of each stored result. Its errors are OpenAI's (`app.openai.errors`).

One named flow commits before it answers, as `app.tasks.routes`' "create, then wait" does:

- **store, create, then wait**: the uploads, the task and its submission job are committed
  in one short transaction, so the worker can take the task while the request waits; the
  wait holds no session (`app.tasks.watching`); the results are then read in a short
  transaction of their own.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from app.db import transaction
from app.deps import CallerDep, ResourcesDep
from app.links import link_key
from app.openai import service
from app.openai.errors import OpenAIError, OpenAIRoute
from app.openai.schemas import MODEL, ImagesResponse, OpenAIErrorBody, ResponseFormat
from app.resources import Resources
from app.results.links import ResultLinks
from app.tasks import service as tasks_service
from app.tasks.watching import Watch, wait_until_settled

OPENAI_PREFIX = "/v1/images/"
EDITS_PATH = "/v1/images/edits"

router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": OpenAIErrorBody}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "A parameter is missing or not valid, an image cannot be used, or EvoLink refused "
        "the content (`code` `content_policy_violation`)."
    ),
    401: _error("No key, or a key that is not valid (`code` `invalid_api_key`)."),
    402: _error("The client's budget does not cover the edit (`code` `insufficient_quota`)."),
    403: _error("The key's client is disabled."),
    413: _error("An image is over the upload limit, or the body over three of them."),
    429: _error("Over the client's limits; retry after `Retry-After`."),
    500: _error("The task failed or was cancelled; `message` names it."),
    503: _error("The database or the storage is unavailable; retry."),
    504: _error(
        "The task has not settled within EDITHOOK_OPENAI_WAIT_SECONDS; `message` and "
        "`Edithook-Task-Id` name it, it goes on, and the answer says not to retry."
    ),
}


def _watch(resources: Resources) -> Watch:
    assert resources.waiter is not None, "the API opens its resources with a waiter"
    return Watch(resources.sessions, resources.waiter)


def _links(resources: Resources) -> ResultLinks:
    settings = resources.settings
    return ResultLinks(
        resources.storage,
        public_base_url=settings.public_base_url,
        key=link_key(settings.callback_secret.get_secret_value()),
        ttl_seconds=settings.result_url_ttl_seconds,
    )


FormText = Annotated[str | None, Form()]


@router.post(
    "/edits",
    summary="Edit images (OpenAI-compatible)",
    description=(
        "OpenAI's `images.edit`: `image` or `image[]` (1–3 PNG, JPEG or WebP files), "
        f"`prompt`, `model` (absent or `{MODEL}`), `n`, `size` (`WxH` or `auto`), "
        "`response_format` (`url` or `b64_json`), `user` (kept in the task's metadata), and "
        "edithook's `negative_prompt`, `seed`, `watermark`, `prompt_extend`. The answer is "
        'held until the task is settled. Errors are OpenAI\'s `{"error": {…}}`.'
    ),
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={
        200: {
            "description": "The images.",
            "headers": {"Edithook-Task-Id": {"schema": {"type": "string", "format": "uuid"}}},
        },
        **ERRORS,
    },
)
async def create_image_edit(
    request: Request,
    caller: CallerDep,
    resources: ResourcesDep,
    response: Response,
    prompt: Annotated[str, Form(description="What to change; at most 2000 characters.")],
    image: Annotated[list[UploadFile] | None, File(description="1–3 input images.")] = None,
    images: Annotated[
        list[UploadFile] | None, File(alias="image[]", description="The same, as an array.")
    ] = None,
    model: FormText = None,
    n: Annotated[int | None, Form(description="Images to make, 1–6.")] = None,
    size: Annotated[str | None, Form(description="`WIDTHxHEIGHT` (512–2048) or `auto`.")] = None,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.URL,
    user: Annotated[str | None, Form(description="The end user; kept as metadata `user`.")] = None,
    negative_prompt: FormText = None,
    seed: Annotated[int | None, Form()] = None,
    watermark: Annotated[bool | None, Form()] = None,
    prompt_extend: Annotated[bool | None, Form()] = None,
) -> ImagesResponse:
    settings = resources.settings
    form = await request.form()  # already read for the parameters above: no second read
    names = list(dict.fromkeys(form.keys()))
    service.check_fields(names, {name: form.getlist(name) for name in names})
    service.check_model(model)
    files = [*(image or []), *(images or [])]
    service.check_image_count(len(files))
    body = service.task_create(
        {
            "prompt": prompt,
            "n": n,
            "size": size,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "watermark": watermark,
            "prompt_extend": prompt_extend,
            "user": user,
        },
        len(files),
    )
    limit = settings.upload_max_bytes
    datas: list[tuple[bytes, str | None]] = []
    for file in files:
        if file.size is not None and file.size > limit:
            raise OpenAIError(
                413,
                f"The image {file.filename or ''!r} is over the upload limit of {limit} bytes.",
                param="image",
                code="payload_too_large",
            )
        datas.append((await file.read(), file.content_type))

    # Named flow "store, create, then wait": committed before any waiting.
    async with transaction(resources.sessions) as session:
        upload_ids = await service.store_images(
            session, resources.storage, caller, datas, settings=settings
        )
        task, _ = await tasks_service.create_task(
            session, caller, service.with_uploads(body, upload_ids), None
        )
    structlog.contextvars.bind_contextvars(task_id=str(task.id))
    response.headers[service.TASK_HEADER] = str(task.id)

    seconds = settings.openai_wait_seconds
    shared, settled = await wait_until_settled(_watch(resources), caller, task.id, seconds)
    if not settled:
        raise service.timed_out(shared.view.task, seconds)
    error = service.failure(shared.view)
    if error is not None:
        raise error
    async with transaction(resources.sessions) as session:
        results = await service.stored_results(session, caller, task.id)
    return await service.answer(
        shared.view.task,
        results,
        response_format,
        storage=resources.storage,
        links=_links(resources),
    )
