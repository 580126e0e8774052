"""EvoLink's wire models for `qwen-image-edit-plus`: the create request, the task object, errors.

Parsing is lenient on purpose: the provider's documented shapes have changed over time
(string versus integer error codes, new and dropped fields), so unknown fields are ignored,
every optional field may be missing, and `status` stays a plain string so that a status we
have never seen still parses and can be judged by the caller.

What the provider says is stored, so every string and JSON value kept from it is made
storable as it is read: NUL and unpaired surrogates (which Postgres refuses in text and
JSONB) become U+FFFD, and non-finite numbers (which JSONB refuses) become null. Validated
with the context `{SCRUB: token}`, every form of that callback token is scrubbed from them
too (app.security.scrub_token): the provider may quote our callback URL in an error.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from app.security import scrub_token

MODEL_NAME: Final = "qwen-image-edit-plus"

STATUS_PENDING: Final = "pending"
STATUS_PROCESSING: Final = "processing"
STATUS_COMPLETED: Final = "completed"
STATUS_FAILED: Final = "failed"
# Not in the documented enum, but the callback fires on "cancelled"; see the contract, §4.
STATUS_CANCELLED: Final = "cancelled"

PROVIDER_STATUSES: Final = (
    STATUS_PENDING,
    STATUS_PROCESSING,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_CANCELLED,
)
TERMINAL_STATUSES: Final = (STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED)

# The task-level error code a cancellation may arrive as (`status: "failed"`).
ERROR_REQUEST_CANCELLED: Final = "request_cancelled"


# NUL, and surrogates left unpaired (a JSON "\\ud800" decodes to one): Postgres refuses both.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """`value` with NUL and unpaired surrogates replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value)


def storable_json(value: Any, token: str | None = None) -> Any:
    """`value` as JSONB accepts it: strings (keys too) made storable and free of `token`,
    NaN and infinities null."""
    if isinstance(value, str):
        return scrub_token(storable_text(value), token)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            scrub_token(storable_text(str(key)), token): storable_json(item, token)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [storable_json(item, token) for item in value]
    return value


# The validation context key naming a callback token to scrub from what is read.
SCRUB: Final = "scrub"


def _scrubbed_token(info: ValidationInfo) -> str | None:
    token = info.context.get(SCRUB) if isinstance(info.context, dict) else None
    return token if isinstance(token, str) else None


def _storable_str(value: str, info: ValidationInfo) -> str:
    return scrub_token(storable_text(value), _scrubbed_token(info))


def _storable_json(value: dict[str, Any], info: ValidationInfo) -> Any:
    return storable_json(value, _scrubbed_token(info))


def _lenient_int(value: Any) -> Any:
    """Floats and numeric strings become ints; anything unreadable becomes None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = _lenient_float(value)
    return int(number) if number is not None else None


def _lenient_float(value: Any) -> float | None:
    """Numbers and numeric strings become floats; anything else (NaN and inf too) None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # an integer of hundreds of digits overflows
        return None
    return number if math.isfinite(number) else None


LenientInt = Annotated[int | None, BeforeValidator(_lenient_int)]
LenientFloat = Annotated[float | None, BeforeValidator(_lenient_float)]
StorableStr = Annotated[str, AfterValidator(_storable_str)]
StorableJson = Annotated[dict[str, Any], AfterValidator(_storable_json)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProviderErrorBody(_Lenient):
    """The `error` object of an HTTP error envelope or of a failed task.

    `code` is a string business code in the current docs and an integer equal to the HTTP
    status in the older envelope; `code_str` gives either as a string.
    """

    code: StorableStr | int | None = None
    message: StorableStr | None = None
    type: StorableStr | None = None
    param: StorableStr | None = None
    fallback_suggestion: StorableStr | None = None

    @property
    def code_str(self) -> str | None:
        return None if self.code is None else str(self.code)


class TaskInfo(_Lenient):
    can_cancel: bool | None = None
    estimated_time: LenientFloat = None


class ProviderTask(_Lenient):
    """The task object: the create answer, the `GET /v1/tasks/{id}` answer, the callback body.

    `results` (image URLs, valid for 24 h) is present once completed; `error` once failed.
    """

    id: StorableStr
    status: StorableStr
    progress: LenientInt = None
    created: LenientInt = None
    model: StorableStr | None = None
    task_info: TaskInfo | None = None
    usage: StorableJson | None = None
    results: list[StorableStr] | None = None
    error: ProviderErrorBody | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class CreateRequest(_Lenient):
    """The body of `POST /v1/images/generations`.

    Limits are not enforced here: the service validates its own API input, and the provider
    is the authority on what it accepts (its refusals come back as permanent errors).
    """

    model: Literal["qwen-image-edit-plus"] = MODEL_NAME
    prompt: str
    image_urls: list[str]
    n: int | None = None
    negative_prompt: str | None = None
    size: str | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    seed: int | None = None
    callback_url: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send: unset (None) fields are left out, so provider defaults apply."""
        return self.model_dump(mode="json", exclude_none=True)
