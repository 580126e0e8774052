"""The documented rules of `POST /v1/images/generations`, and the simulator's prompt directives."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from evolink_simulator.hosts import host_is_public

MODEL = "qwen-image-edit-plus"
MAX_PROMPT = 2000
MAX_NEGATIVE_PROMPT = 500
MAX_IMAGES = 3
MAX_N = 6
MIN_SIDE, MAX_SIDE = 512, 2048
MAX_SEED = 2147483647
MAX_CALLBACK_URL = 2048
_SIZE = re.compile(r"^[0-9]+x[0-9]+$")
_DIRECTIVE = re.compile(r"\[sim:([a-z-]+)(?:=([^\]]*))?\]")


class Invalid(Exception):
    """A request the provider would refuse with 400; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass
class Directives:
    """What a prompt asks of the simulator."""

    fail: str | None = None
    cancel: bool = False
    cancel_as_failed: bool = False
    no_callback: bool = False
    hold: bool = False
    slow: float | None = None
    results: int | None = None


@dataclass
class Edit:
    """A create request that passed validation."""

    prompt: str
    image_urls: list[str]
    n: int
    size: tuple[int, int] | None
    seed: int | None
    callback_url: str | None
    directives: Directives


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_create(body: Any, *, allow_insecure_callbacks: bool) -> Edit:
    """The validated request, or Invalid with the first rule it breaks."""
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise Invalid("model is required", "model")
    if model != MODEL:
        raise Invalid(f"model must be {MODEL!r}", "model")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("prompt is required and must be a non-empty string", "prompt")
    if len(prompt) > MAX_PROMPT:
        raise Invalid(f"prompt must be at most {MAX_PROMPT} characters", "prompt")

    urls = body.get("image_urls")
    if not isinstance(urls, list) or not urls:
        raise Invalid("image_urls is required: 1 to 3 image URLs", "image_urls")
    if len(urls) > MAX_IMAGES:
        raise Invalid(f"image_urls accepts at most {MAX_IMAGES} images", "image_urls")
    for url in urls:
        if not isinstance(url, str) or not _is_web_url(url):
            raise Invalid("each image_urls entry must be an http(s) URL", "image_urls")

    n = body.get("n", 1)
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise Invalid(f"n must be an integer from 1 to {MAX_N}", "n")

    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise Invalid("negative_prompt must be a string", "negative_prompt")
    if negative is not None and len(negative) > MAX_NEGATIVE_PROMPT:
        raise Invalid(
            f"negative_prompt must be at most {MAX_NEGATIVE_PROMPT} characters", "negative_prompt"
        )

    size = _size(body.get("size"), n)

    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise Invalid(f"seed must be an integer from 0 to {MAX_SEED}", "seed")
    for flag in ("prompt_extend", "watermark"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise Invalid(f"{flag} must be a boolean", flag)

    callback_url = body.get("callback_url")
    if callback_url is not None:
        check_callback_url(callback_url, allow_insecure=allow_insecure_callbacks)

    return Edit(
        prompt=prompt,
        image_urls=urls,
        n=n,
        size=size,
        seed=seed,
        callback_url=callback_url,
        directives=parse_directives(prompt),
    )


def _size(value: Any, n: int) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SIZE.match(value):
        raise Invalid("size must look like 1024x1536 (WIDTHxHEIGHT, lowercase x)", "size")
    width, height = (int(side) for side in value.split("x"))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise Invalid(f"size: width and height must each be {MIN_SIDE} to {MAX_SIDE}", "size")
    if n != 1:
        raise Invalid("size is only allowed when n is 1", "size")
    return width, height


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_callback_url(url: Any, *, allow_insecure: bool) -> None:
    """Raise Invalid unless `url` is a callback URL the provider would accept.

    The URL is never quoted back in the message: it carries the receiver's secret token.
    """
    if not isinstance(url, str) or not _is_web_url(url):
        raise Invalid("callback_url must be an absolute https URL", "callback_url")
    if len(url) > MAX_CALLBACK_URL:
        raise Invalid(f"callback_url must be at most {MAX_CALLBACK_URL} characters", "callback_url")
    if allow_insecure:
        return
    if urlsplit(url).scheme != "https":
        raise Invalid("callback_url must use HTTPS", "callback_url")
    # The host is read as a resolver reads it (`127.1`, `localhost.`, full-width letters,
    # NAT64 and 6to4 forms of loopback are all refused).
    if not host_is_public(url):
        raise Invalid(
            "callback_url must be a well-formed URL not pointing at internal, private or "
            "loopback addresses",
            "callback_url",
        )


def parse_directives(prompt: str) -> Directives:
    """Read `[sim:...]` directives; an unknown or malformed one is Invalid, not ignored."""
    found = Directives()
    for match in _DIRECTIVE.finditer(prompt):
        name, value = match.group(1), match.group(2)
        if name == "fail" and value:
            found.fail = value.strip()
        elif name == "cancel" and value is None:
            found.cancel = True
        elif name == "cancel-as-failed" and value is None:
            found.cancel_as_failed = True
        elif name == "no-callback" and value is None:
            found.no_callback = True
        elif name == "hold" and value is None:
            found.hold = True
        elif name == "slow" and value is not None and _number(value) is not None:
            found.slow = _number(value)
        elif name == "results" and value is not None and value.strip().isdigit():
            found.results = int(value)
        else:
            raise Invalid(f"simulator directive {match.group(0)!r} is not understood", "prompt")
    return found


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 3600 else None
