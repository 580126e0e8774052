"""The REST shapes of tasks, their results and their events."""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from app.urls import check_url
from app.vocabulary import (
    MAX_RESULTS,
    EventKind,
    EventOutcome,
    ResolvedBy,
    ResultStatus,
    TaskStatus,
)

PROMPT_MAX = 2000
NEGATIVE_PROMPT_MAX = 500
IMAGE_URLS_MAX = 3
URL_MAX = 2048
SIZE_MIN, SIZE_MAX = 512, 2048
SEED_MAX = 2_147_483_647
METADATA_MAX_KEYS = 20
# Matched with `fullmatch`: `$` would also match before a final newline.
METADATA_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _listed(words: type[StrEnum]) -> str:
    return ", ".join(word.value for word in words)


METADATA_VALUE_MAX = 500
# `cancel_after_seconds`: at least a second, at most a day.
CANCEL_AFTER_MIN, CANCEL_AFTER_MAX = 1, 86_400
SIZE_RE = re.compile(r"([0-9]+)x([0-9]+)")
# Postgres stores neither NUL nor a lone surrogate (JSON's `"\udfff"` reads as one).
UNSTORABLE_RE = re.compile(r"[\x00\ud800-\udfff]")
# Default-ignorable letters and marks that draw nothing (Hangul fillers, variation
# selectors, the combining grapheme joiner); formats (Cf) and separators are found by category.
INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)

# What the checks below accept, as JSON Schema says it in the OpenAPI document. Where JSON
# Schema cannot say it (a public https URL, a prompt with something visible in it) a named
# format stands for the rule; `tests/integration/schemathesis_hooks.py` knows how to make such
# values.
_SIDE = "(5(1[2-9]|[2-9][0-9])|[6-9][0-9]{2}|1[0-9]{3}|20[0-3][0-9]|204[0-8])"
SIZE_SCHEMA: dict[str, Any] = {"pattern": f"^{_SIDE}x{_SIDE}$"}
NO_NUL = "^[^\\u0000]*$"
PROMPT_SCHEMA: dict[str, Any] = {"format": "visible-text"}
IMAGE_URL_SCHEMA: dict[str, Any] = {"format": "public-https-url", "maxLength": URL_MAX}
WEBHOOK_URL_SCHEMA: dict[str, Any] = {"format": "public-https-url"}
METADATA_SCHEMA: dict[str, Any] = {
    "maxProperties": METADATA_MAX_KEYS,
    "propertyNames": {"pattern": "^[A-Za-z0-9_.\\-]{1,64}$"},
    "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX, "pattern": NO_NUL},
}
UPLOAD_ID_SCHEMA: dict[str, Any] = {"format": "upload-id"}


def _images_in_all(ids: int) -> dict[str, Any]:
    # With `ids` uploads named, at most 3 - ids URLs.
    return {
        "if": {"properties": {"image_ids": {"minItems": ids}}, "required": ["image_ids"]},
        "then": {"properties": {"image_urls": {"maxItems": IMAGE_URLS_MAX - ids}}},
    }


# `size` only with one image, and one to three images between `image_urls` and `image_ids`:
# JSON Schema's if/then and anyOf.
TASK_CREATE_SCHEMA: dict[str, Any] = {
    "if": {"properties": {"size": {"type": "string"}}, "required": ["size"]},
    "then": {"properties": {"n": {"const": 1}}},
    "anyOf": [
        {"properties": {"image_urls": {"minItems": 1}}, "required": ["image_urls"]},
        {"properties": {"image_ids": {"minItems": 1}}, "required": ["image_ids"]},
    ],
    "allOf": [_images_in_all(ids) for ids in range(1, IMAGE_URLS_MAX + 1)],
}

EXAMPLE_CREATE: dict[str, Any] = {
    "prompt": "Replace the background with a snowy mountain range, keep the person unchanged",
    "image_urls": ["https://cdn.example.com/in/abc123.png"],
    "n": 1,
    "size": "1024x1536",
    "negative_prompt": "blurry, low quality",
    "seed": 42,
    "metadata": {"order_id": "A-1009"},
}


def _check_image_url(url: str) -> str:
    if len(url) > URL_MAX:
        raise ValueError(f"must be at most {URL_MAX} characters")
    check_url(url)  # UrlRefused is a ValueError, so its reason becomes the field's message
    return url


def _storable(value: str) -> str:
    found = UNSTORABLE_RE.search(value)
    if found and found[0] == "\x00":
        raise ValueError("must not contain NUL characters (U+0000)")
    if found:
        raise ValueError("must not contain unpaired surrogates (U+D800–U+DFFF)")
    return value


def _is_visible(char: str) -> bool:
    if char.isspace() or char in INVISIBLE:
        return False
    return unicodedata.category(char) not in ("Cc", "Cf", "Zs", "Zl", "Zp")


StorableStr = Annotated[StrictStr, AfterValidator(_storable)]


def _integral(value: Any) -> Any:
    # JSON Schema's integer is any number without a fractional part, so 2.0 is one; a string
    # or a boolean is not, and StrictInt still refuses those.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The validator goes after the bounds, so that the bounds stay in the JSON schema.
IntegralNumber = BeforeValidator(_integral)


class TaskCreate(BaseModel):
    """An edit to run: the provider's documented parameters, checked against its limits."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [EXAMPLE_CREATE], **TASK_CREATE_SCHEMA}
    )

    prompt: StorableStr = Field(
        min_length=1,
        max_length=PROMPT_MAX,
        description="What to change; at most 2000 characters, some of them visible.",
        json_schema_extra=PROMPT_SCHEMA,
    )
    # Declared before `image_urls`, whose check counts both: pydantic validates in this order.
    image_ids: list[Annotated[uuid.UUID, Field(json_schema_extra=UPLOAD_ID_SCHEMA)]] = Field(
        default_factory=list,
        max_length=IMAGE_URLS_MAX,
        description=(
            "Ids of your uploads (`POST /v1/uploads`) to edit, sent to EvoLink after "
            "`image_urls`; 1–3 images in all."
        ),
    )
    image_urls: list[
        Annotated[
            StrictStr,
            AfterValidator(_check_image_url),
            Field(json_schema_extra=IMAGE_URL_SCHEMA),
        ]
    ] = Field(
        default_factory=list,
        max_length=IMAGE_URLS_MAX,
        validate_default=True,
        description=(
            "Publicly reachable https URLs of the input images, sent first; with "
            "`image_ids`, 1–3 images in all."
        ),
    )
    n: Annotated[StrictInt, Field(ge=1, le=MAX_RESULTS), IntegralNumber] = Field(
        default=1, description="Number of images to produce (1–6; the provider pre-charges n)."
    )
    size: StorableStr | None = Field(
        default=None,
        description="WIDTHxHEIGHT, each side 512–2048; only with n = 1.",
        examples=["1024x1536"],
        json_schema_extra=SIZE_SCHEMA,
    )
    negative_prompt: StorableStr | None = Field(
        default=None, max_length=NEGATIVE_PROMPT_MAX, json_schema_extra={"pattern": NO_NUL}
    )
    prompt_extend: StrictBool = Field(
        default=True, description="Let the provider rewrite the prompt."
    )
    watermark: StrictBool = False
    seed: Annotated[StrictInt, Field(ge=0, le=SEED_MAX), IntegralNumber] | None = None
    metadata: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        description="Up to 20 string pairs of your own; keys 1–64 of [A-Za-z0-9_.-], values ≤ 500.",
        json_schema_extra=METADATA_SCHEMA,
    )
    webhook_url: StrictStr | None = Field(
        default=None,
        max_length=URL_MAX,
        description=(
            "Where this task's events are sent too, signed with the client's own secret "
            "(`GET /v1/webhook-secret`); the same rule as webhook endpoints' URLs."
        ),
        json_schema_extra=WEBHOOK_URL_SCHEMA,
    )
    cancel_after_seconds: (
        Annotated[StrictInt, Field(ge=CANCEL_AFTER_MIN, le=CANCEL_AFTER_MAX), IntegralNumber] | None
    ) = Field(
        default=None,
        description=(
            "Cancel the task if it is still not submitted to EvoLink this many seconds "
            "(1–86400) after it was created — waiting in the queue, or on EvoLink refusing "
            "creates for now (429). It then ends `cancelled`, `resolved_by` `system`, error "
            "code `cancel_after_elapsed`, and costs nothing. Once submitted, it goes on."
        ),
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        # Zero-width and other format characters draw nothing: a prompt of them is blank.
        if not any(_is_visible(char) for char in value):
            raise ValueError("must not be blank")
        return value

    @field_validator("image_urls")
    @classmethod
    def _image_count(cls, value: list[str], info: ValidationInfo) -> list[str]:
        ids = info.data.get("image_ids")
        if ids is None:
            return value  # `image_ids` is itself invalid, and says so
        total = len(value) + len(ids)
        if total == 0:
            raise ValueError("give 1–3 input images, in image_urls and/or image_ids")
        if total > IMAGE_URLS_MAX:
            raise ValueError(
                f"at most {IMAGE_URLS_MAX} input images in all; got {len(value)} in "
                f"image_urls and {len(ids)} in image_ids"
            )
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        match = SIZE_RE.fullmatch(value)
        if not match:
            raise ValueError("must look like 1024x1536 (WIDTHxHEIGHT, lowercase x)")
        width, height = int(match[1]), int(match[2])
        if not (SIZE_MIN <= width <= SIZE_MAX and SIZE_MIN <= height <= SIZE_MAX):
            raise ValueError(f"each side must be between {SIZE_MIN} and {SIZE_MAX}")
        n = info.data.get("n")
        if isinstance(n, int) and n != 1:
            raise ValueError("is only allowed when n is 1")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_keys(cls, value: Any) -> Any:
        # Keys are checked before the values: an error about a value is named after its key,
        # and a key that is not plain ASCII must not become part of a field name.
        if isinstance(value, dict):
            if len(value) > METADATA_MAX_KEYS:
                raise ValueError(f"must have at most {METADATA_MAX_KEYS} keys")
            bad_keys = [
                key
                for key in value
                if not (isinstance(key, str) and METADATA_KEY_RE.fullmatch(key))
            ]
            if bad_keys:
                raise ValueError(f"keys must be 1–64 of [A-Za-z0-9_.-]: {bad_keys[:5]}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        unstorable = [key for key, item in value.items() if UNSTORABLE_RE.search(item)]
        if unstorable:
            raise ValueError(
                f"values must not contain NUL characters or unpaired surrogates: {unstorable[:5]}"
            )
        long_values = [key for key, item in value.items() if len(item) > METADATA_VALUE_MAX]
        if long_values:
            raise ValueError(
                f"values must be at most {METADATA_VALUE_MAX} characters: {long_values[:5]}"
            )
        return value

    def provider_request(self) -> dict[str, Any]:
        """The edit in the provider's field names, without unset optional fields, and the
        `image_ids` of uploads when there are any: the submission turns them into links
        appended to `image_urls` (`app.uploads.inputs`)."""
        request = self.model_dump(
            mode="json",
            exclude={"metadata", "webhook_url", "cancel_after_seconds", "image_ids"},
            exclude_none=True,
        )
        if self.image_ids:
            request["image_ids"] = [str(upload_id) for upload_id in self.image_ids]
        return request


class TaskError(BaseModel):
    code: str | None
    message: str | None


class TaskLinks(BaseModel):
    self: str
    results: str
    events: str


EXAMPLE_TASK: dict[str, Any] = {
    "id": "6f1c5a34-9a0e-4b7e-8f43-2b1d1c0e9a51",
    "status": "completed",
    "progress": 100,
    "request": {
        **{k: v for k, v in EXAMPLE_CREATE.items() if k != "metadata"},
        "prompt_extend": True,
        "watermark": False,
    },
    "metadata": {"order_id": "A-1009"},
    "provider_task_id": "task-unified-1795497285-a0fgv76l",
    "estimated_seconds": 12.0,
    "usage": {"billing_rule": "per_call", "credits_reserved": 2, "user_group": "default"},
    "error": None,
    "resolved_by": "callback",
    "result_count": 1,
    "results_stored": True,
    "created_at": "2026-11-24T05:14:44.990535Z",
    "updated_at": "2026-11-24T05:14:58.120931Z",
    "submitted_at": "2026-11-24T05:14:45.003965Z",
    "finished_at": "2026-11-24T05:14:57.870114Z",
    "webhook_url": None,
    "cancel_at": None,
    "links": {
        "self": "/v1/tasks/6f1c5a34-9a0e-4b7e-8f43-2b1d1c0e9a51",
        "results": "/v1/tasks/6f1c5a34-9a0e-4b7e-8f43-2b1d1c0e9a51/results",
        "events": "/v1/tasks/6f1c5a34-9a0e-4b7e-8f43-2b1d1c0e9a51/events",
    },
}


class TaskRead(BaseModel):
    """A task as its client sees it."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TASK]})

    id: uuid.UUID
    status: TaskStatus = Field(
        description="Where the task stands; completed, failed and cancelled are terminal."
    )
    progress: int
    request: dict[str, Any] = Field(description="The edit parameters as submitted.")
    metadata: dict[str, Any]
    provider_task_id: str | None
    estimated_seconds: float | None
    usage: dict[str, Any] | None
    error: TaskError | None
    resolved_by: ResolvedBy | None = Field(
        description=(
            "What told us the terminal state: the provider's callback, our poll, the create's"
            " own answer (submission), edithook's own decision (system, such as a time"
            " limit or `cancel_after_seconds`), or the client's cancel (client)."
            f" One of: {_listed(ResolvedBy)}; null until terminal."
        )
    )
    result_count: int
    results_stored: bool = Field(description="True once every result image is in our storage.")
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    webhook_url: str | None = Field(description="Where this task's events are sent too.")
    cancel_at: datetime | None = Field(
        description=(
            "When the task is cancelled if it is still not submitted by then "
            "(`cancel_after_seconds`); null: never."
        )
    )
    links: TaskLinks


class TaskPage(BaseModel):
    items: list[TaskRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )


class ResultRead(BaseModel):
    """One result image and the state of our copy of it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "index": 0,
                    "status": "stored",
                    "source_url": "https://files.evolink.ai/results/task-unified-1795497285-a0fgv76l/0.png",
                    "content_type": "image/png",
                    "size_bytes": 1843211,
                    "sha256": "9f2c0d3b5e0a4c1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d",
                    "width": 1024,
                    "height": 1536,
                    "error": None,
                    "stored_at": "2026-11-24T05:14:58.120931Z",
                }
            ]
        }
    )

    index: int
    status: ResultStatus = Field(
        description=f"pending (not yet copied), stored, or failed. One of: {_listed(ResultStatus)}."
    )
    source_url: str = Field(
        # Read from a stored row (`provider_url`) as well as from a dict of this model.
        validation_alias=AliasChoices("source_url", "provider_url"),
        description="The provider's link; it expires 24 h after completion.",
    )
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    width: int | None
    height: int | None
    error: str | None
    stored_at: datetime | None


class ResultList(BaseModel):
    task_id: uuid.UUID
    all_stored: bool
    items: list[ResultRead]


class EventRead(BaseModel):
    """One thing that happened to a task; `body` is the raw callback or response body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "kind": "callback",
                    "outcome": "applied",
                    "from_status": "processing",
                    "to_status": "completed",
                    "provider_status": "completed",
                    "detail": None,
                    "body": '{"id": "task-unified-1795497285-a0fgv76l", "status": "completed", …}',
                    "headers": {"content-type": "application/json", "peer": "203.0.113.7"},
                    "created_at": "2026-11-24T05:14:57.871002Z",
                }
            ]
        }
    )

    id: int
    kind: EventKind = Field(
        description=(
            "What caused it: the task's creation, its submission, a callback, a poll, copying"
            " its result images (storage), edithook's own decision (system), or the client's"
            " own request (client: a cancel)."
            f" One of: {_listed(EventKind)}."
        )
    )
    outcome: EventOutcome = Field(
        description=(
            "What it did: applied (moved the task or changed its fields), duplicate (repeated"
            " what the task says), stale (older than it), anomaly (contradicts a terminal"
            " state or cannot be matched; kept, not applied), rejected (unreadable body) or"
            f" error (the call behind it failed). One of: {_listed(EventOutcome)}."
        )
    )
    from_status: TaskStatus | None = Field(description="Set when the event moved the task.")
    to_status: TaskStatus | None = Field(description="Set when the event moved the task.")
    provider_status: str | None
    detail: str | None
    body: str | None
    headers: dict[str, Any] | None
    created_at: datetime


class EventPage(BaseModel):
    items: list[EventRead]
    next_cursor: str | None
