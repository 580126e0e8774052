"""POST /v1/uploads over real HTTP: what is accepted, what is refused, and how it is worded."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import Service
from tests.images import encoded, truncated_png

PROBLEM = "tag:edithook,2026:problem/"


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["type"] == PROBLEM + slug
    return body


async def test_a_multipart_upload_is_stored_and_described(api: httpx.AsyncClient) -> None:
    """The multipart field `file` is decoded and answered 201 with what it is."""
    data = encoded("PNG", 640, 480)
    response = await api.post("/v1/uploads", files={"file": ("in.png", data, "image/png")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id", "content_type", "size_bytes", "sha256", "width", "height", "created_at",
        "expires_at",
    }  # fmt: skip
    assert body["content_type"] == "image/png"
    assert body["size_bytes"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["width"], body["height"]) == (640, 480)
    assert body["expires_at"] > body["created_at"]
    assert response.headers["location"] == f"/v1/uploads/{body['id']}"
    again = await api.get(f"/v1/uploads/{body['id']}")
    assert again.status_code == 200
    assert again.json() == body


@pytest.mark.parametrize(("kind", "content_type"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
async def test_a_raw_body_upload_is_stored(
    api: httpx.AsyncClient, kind: str, content_type: str
) -> None:
    """The image bytes as the body, with their image Content-Type, are an upload too."""
    data = encoded(kind, 400, 900)
    response = await api.post("/v1/uploads", content=data, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == content_type
    assert (response.json()["width"], response.json()["height"]) == (400, 900)


async def test_the_bytes_decide_the_type_not_the_declared_one(api: httpx.AsyncClient) -> None:
    """A JPEG sent as application/octet-stream is recorded as image/jpeg."""
    response = await api.post(
        "/v1/uploads",
        content=encoded("JPEG"),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "image/jpeg"


async def test_text_is_refused_as_not_an_image(api: httpx.AsyncClient) -> None:
    """Text, raw or in the multipart field, is 415 saying what to send."""
    raw = await api.post("/v1/uploads", content=b"hello", headers={"Content-Type": "text/plain"})
    assert "multipart/form-data" in str(_problem(raw, 415, "unsupported-media-type")["detail"])
    part = await api.post("/v1/uploads", files={"file": ("a.txt", b"just words", "text/plain")})
    detail = str(_problem(part, 415, "unsupported-media-type")["detail"])
    assert "PNG, JPEG or WebP" in detail


async def test_a_gif_is_refused_by_name(api: httpx.AsyncClient) -> None:
    """A GIF is an image, but not one EvoLink is sure to take: 415 naming it."""
    response = await api.post("/v1/uploads", files={"file": ("a.gif", encoded("GIF"), "image/gif")})
    assert "GIF" in str(_problem(response, 415, "unsupported-media-type")["detail"])


async def test_a_truncated_png_is_refused_as_undecodable(api: httpx.AsyncClient) -> None:
    """A PNG cut in half has the right signature and does not decode: 422."""
    response = await api.post(
        "/v1/uploads", content=truncated_png(), headers={"Content-Type": "image/png"}
    )
    body = _problem(response, 422, "invalid-image")
    assert "truncated or corrupt" in str(body["detail"])
    assert body["errors"] == [{"field": "body", "message": body["detail"], "code": "undecodable"}]


@pytest.mark.parametrize(("width", "height"), [(200, 800), (512, 3100)])
async def test_sides_outside_evolinks_limits_are_refused(
    api: httpx.AsyncClient, width: int, height: int
) -> None:
    """EvoLink takes 384 to 3072 px a side; anything else is 422 naming the size."""
    response = await api.post(
        "/v1/uploads", content=encoded("PNG", width, height), headers={"Content-Type": "image/png"}
    )
    assert f"{width}x{height}" in str(_problem(response, 422, "invalid-image")["detail"])


async def test_a_multipart_body_without_the_file_field_is_refused(api: httpx.AsyncClient) -> None:
    """The image must be in `file`: another field name is a 422 naming `file`."""
    response = await api.post("/v1/uploads", files={"image": ("a.png", encoded(), "image/png")})
    body = _problem(response, 422, "validation-error")
    assert body["errors"] == [
        {"field": "file", "message": "a file part named `file` is required", "code": "missing"}
    ]


async def test_another_clients_upload_is_not_found(
    api: httpx.AsyncClient, beta_api: httpx.AsyncClient
) -> None:
    """An upload is its client's alone: another client reads a 404."""
    response = await api.post(
        "/v1/uploads", content=encoded(), headers={"Content-Type": "image/png"}
    )
    upload_id = response.json()["id"]
    assert (await beta_api.get(f"/v1/uploads/{upload_id}")).status_code == 404


async def test_an_image_over_the_upload_limit_is_refused(
    api: httpx.AsyncClient, service: Service
) -> None:
    """EDITHOOK_UPLOAD_MAX_BYTES holds for multipart, raw and streamed bodies alike: 413
    naming the limit, before anything is decoded or stored."""
    limit = service.settings.upload_max_bytes
    over = b"\x89PNG\r\n\x1a\n" + bytes(limit)

    multipart = await api.post("/v1/uploads", files={"file": ("big.png", over, "image/png")})
    assert f"upload limit of {limit} bytes" in str(
        _problem(multipart, 413, "payload-too-large")["detail"]
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(over), 1 << 20):
            yield over[start : start + (1 << 20)]

    streamed = await api.post(
        "/v1/uploads", content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert f"upload limit of {limit} bytes" in str(
        _problem(streamed, 413, "payload-too-large")["detail"]
    )

    declared = await api.post("/v1/uploads", content=over, headers={"Content-Type": "image/png"})
    _problem(declared, 413, "payload-too-large")


async def test_only_the_upload_path_takes_bodies_that_large(api: httpx.AsyncClient) -> None:
    """Elsewhere the client API's 1 MiB body limit still holds."""
    body = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    response = await api.post(
        "/v1/tasks", content=body, headers={"Content-Type": "application/json"}
    )
    _problem(response, 413, "payload-too-large")
