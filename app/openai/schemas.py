"""The shapes of `POST /v1/images/edits`, as OpenAI's Images API words them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

MODEL = "qwen-image-edit-plus"
IMAGES_MAX = 3

# The form fields the route reads: OpenAI's, then edithook's own.
OPENAI_FIELDS = frozenset(
    {"image", "image[]", "prompt", "model", "n", "size", "response_format", "user"}
)
EDITHOOK_FIELDS = frozenset({"negative_prompt", "seed", "watermark", "prompt_extend"})
# OpenAI parameters edithook cannot honour, accepted only at the value that asks for what
# it does anyway; any other value, like any field not listed anywhere, is a 400.
DEFAULT_ONLY: dict[str, frozenset[str]] = {
    "stream": frozenset({"false"}),
    "partial_images": frozenset({"0"}),
    "quality": frozenset({"auto"}),
    "background": frozenset({"auto"}),
    "output_format": frozenset({"png"}),
}


class ResponseFormat(StrEnum):
    """How the images come back: a signed link (the default) or the bytes in base64."""

    URL = "url"
    B64_JSON = "b64_json"


class ImageData(BaseModel):
    """One result image: `url` or `b64_json`, as `response_format` asked."""

    url: str | None = Field(
        default=None,
        description="A signed link to the stored image; needs no key, expires.",
    )
    b64_json: str | None = Field(default=None, description="The image's bytes, base64.")


class ImagesResponse(BaseModel):
    """OpenAI's answer to an image edit."""

    created: int = Field(description="When the task was created, in seconds since 1970.")
    data: list[ImageData]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `server_error`, …")
    param: str | None = Field(description="The parameter at fault, if one is.")
    code: str | None = Field(
        description="`invalid_api_key`, `invalid_value`, `content_policy_violation`, …"
    )


class OpenAIErrorBody(BaseModel):
    """An error as OpenAI's API and its SDKs shape it."""

    error: ErrorDetail
