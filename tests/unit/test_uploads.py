"""The pure parts of uploads: judging an image's bytes, the task body's image rule, the
links made at submission, the verdict on an upload gone by then, and the simulator's
stand-in for example hosts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import uuid
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
from obstore.store import S3Store
from PIL import Image
from pydantic import ValidationError

from app.links import LinkCheck, check, link_key
from app.results.storage import ResultStorage
from app.tasks.schemas import TaskCreate
from app.tasks.service import request_hash
from app.tasks.transitions import TaskState
from app.uploads.images import ImageRefused, Refusal, inspect_image, sniff
from app.uploads.inputs import INPUT_UNAVAILABLE, InputLinks, unavailable_input
from app.vocabulary import EventOutcome, TaskStatus
from evolink_simulator.inputs import fetch_target, is_sample_host, sample_image
from tests.images import encoded, truncated_png

SECRET = "a-callback-secret-of-some-length-0123"


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")],
)
def test_png_jpeg_and_webp_are_read_from_their_bytes(kind: str, content_type: str) -> None:
    info = inspect_image(encoded(kind, 384, 3072), declared_type="application/octet-stream")
    assert (info.content_type, info.width, info.height) == (content_type, 384, 3072)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (encoded("GIF"), "a GIF image"),
        (encoded("BMP"), "a BMP image"),
        (encoded("TIFF"), "a TIFF image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "a HEIC image"),
        (b"hello, world", "not an image of a known type"),
    ],
)
def test_other_types_are_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(ImageRefused) as refused:
        inspect_image(data)
    assert refused.value.kind is Refusal.TYPE
    assert named in refused.value.message


def test_a_declared_type_words_the_refusal_of_unknown_bytes() -> None:
    with pytest.raises(ImageRefused, match=r"declared text/plain"):
        inspect_image(b"hello", declared_type="text/plain; charset=utf-8")


def test_a_truncated_png_is_undecodable() -> None:
    assert sniff(truncated_png()) == "PNG"
    with pytest.raises(ImageRefused) as refused:
        inspect_image(truncated_png())
    assert refused.value.kind is Refusal.UNDECODABLE


@pytest.mark.parametrize(("width", "height"), [(383, 500), (500, 383), (3073, 400)])
def test_sides_outside_384_to_3072_are_refused(width: int, height: int) -> None:
    with pytest.raises(ImageRefused) as refused:
        inspect_image(encoded("PNG", width, height))
    assert refused.value.kind is Refusal.DIMENSIONS
    assert f"{width}x{height}" in refused.value.message


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header (IHDR, with a right CRC) claims another size."""
    real = encoded("PNG", 1, 1)
    chunk = b"IHDR" + struct.pack(">II", width, height) + real[24:29]
    return real[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + real[33:]


def test_a_huge_size_in_the_header_is_refused_before_decoding() -> None:
    """A decompression bomb's header is judged before a byte of its data is decoded."""
    with pytest.raises(ImageRefused) as refused:
        inspect_image(_png_claiming(100_000, 100_000))
    assert refused.value.kind is Refusal.DIMENSIONS


ID = uuid.UUID("0b6c1c1e-4c55-4a70-9b0e-0d9f0c2f6f57")


def test_a_task_takes_uploads_with_or_without_urls_one_to_three_in_all() -> None:
    both = TaskCreate.model_validate(
        {"prompt": "p", "image_urls": ["https://a.example/1.png"], "image_ids": [str(ID)]}
    )
    assert both.provider_request()["image_ids"] == [str(ID)]
    assert both.provider_request()["image_urls"] == ["https://a.example/1.png"]
    alone = TaskCreate.model_validate({"prompt": "p", "image_ids": [str(ID)] * 3})
    assert alone.provider_request()["image_urls"] == []
    for body in (
        {"prompt": "p"},
        {"prompt": "p", "image_urls": [], "image_ids": []},
        {"prompt": "p", "image_urls": ["https://a.example/1.png"] * 2, "image_ids": [str(ID)] * 2},
    ):
        with pytest.raises(ValidationError) as invalid:
            TaskCreate.model_validate(body)
        assert [error["loc"] for error in invalid.value.errors()] == [("image_urls",)]


def test_without_uploads_the_request_and_its_digest_are_as_before() -> None:
    """No `image_ids` key in the stored request, and the Idempotency-Key digest unchanged."""
    body = TaskCreate.model_validate({"prompt": "p", "image_urls": ["https://a.example/1.png"]})
    assert "image_ids" not in body.provider_request()
    before = {k: v for k, v in body.model_dump(mode="json").items() if k != "image_ids"}
    expected = hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert request_hash(body) == expected


def test_a_local_store_gets_a_signed_edithook_link_valid_for_the_ttl(tmp_path: object) -> None:
    storage = ResultStorage(str(tmp_path))
    inputs = InputLinks(
        storage, public_base_url="https://hook.example.org/", key=link_key(SECRET), ttl_seconds=600
    )
    url = asyncio.run(inputs.url_for(ID, f"uploads/{ID}.png", "png"))
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "https://hook.example.org"
    assert parts.path == f"/v1/uploads/{ID}/content.png"
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    expires = int(query["expires"])
    assert check(link_key(SECRET), parts.path, query["expires"], query["signature"], expires - 1)
    assert (
        check(link_key(SECRET), parts.path, query["expires"], query["signature"], expires)
        is LinkCheck.EXPIRED
    )


def test_an_object_store_that_signs_gets_its_own_presigned_get() -> None:
    """On S3 (GCS, Azure) EvoLink fetches from the store itself; signing needs no network."""
    store = S3Store(
        "inputs-bucket",
        region="eu-west-1",
        access_key_id="AKIAEXAMPLEEXAMPLE00",
        secret_access_key="secret-access-key-for-signing-only",
    )
    storage = ResultStorage("s3://inputs-bucket", store=store)
    assert storage.can_sign
    inputs = InputLinks(
        storage, public_base_url="https://hook.example.org", key=link_key(SECRET), ttl_seconds=900
    )
    url = asyncio.run(inputs.url_for(ID, f"uploads/{ID}.webp", "webp"))
    assert "inputs-bucket" in url
    assert f"uploads/{ID}.webp" in url
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert "X-Amz-Signature" in query


def test_an_upload_gone_by_submission_fails_a_claimed_task_only() -> None:
    claimed = unavailable_input(TaskState(TaskStatus.SUBMITTING, None), "upload x is gone", None)
    assert claimed.to_status is TaskStatus.FAILED
    assert claimed.changes["error_code"] == INPUT_UNAVAILABLE
    assert claimed.changes["resolved_by"] == "system"
    cancelled = unavailable_input(TaskState(TaskStatus.CANCELLED, None), "upload x is gone", None)
    assert cancelled.outcome is EventOutcome.ERROR
    assert cancelled.to_status is None


@pytest.mark.parametrize(
    ("host", "sample"),
    [
        ("example.com", True),
        ("cdn.example.com.", True),
        ("a.example", True),
        ("EXAMPLE.NET", True),
        ("notexample.com", False),
        ("example.com.evil.io", False),
        ("127.0.0.1", False),
    ],
)
def test_the_simulator_stands_in_for_example_domains_only(host: str, sample: bool) -> None:
    assert is_sample_host(host) is sample
    url = f"https://{host}/in/a.png?x=1"
    target = fetch_target(url, "http://127.0.0.1:9999/")
    assert target == ("http://127.0.0.1:9999/inputs/in/a.png" if sample else url)


def test_sample_inputs_follow_their_names() -> None:
    png = sample_image("in/photo.png")
    assert png is not None
    assert png[1] == "image/png"
    small = sample_image("in/tiny-100x200.jpg")
    assert small is not None
    assert small[1] == "image/jpeg"
    with Image.open(io.BytesIO(small[0])) as image:
        assert image.size == (100, 200)
    assert sample_image("in/missing.png") is None
    assert sample_image("in/notes.txt") is None
