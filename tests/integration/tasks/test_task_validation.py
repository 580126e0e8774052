"""Every documented limit on POST /v1/tasks, checked before anything is stored or sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Caller
from tests.helpers import VALID_EDIT

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("prompt missing", {"prompt": None}, "prompt"),
    ("prompt blank", {"prompt": "   "}, "prompt"),
    ("prompt too long", {"prompt": "x" * 2001}, "prompt"),
    ("prompt not a string", {"prompt": 42}, "prompt"),
    ("image_urls missing", {"image_urls": None}, "image_urls"),
    ("image_urls empty", {"image_urls": []}, "image_urls"),
    ("image_urls more than 3", {"image_urls": ["https://a.example/1.png"] * 4}, "image_urls"),
    ("image url not https", {"image_urls": ["http://a.example/1.png"]}, "image_urls[0]"),
    ("image url relative", {"image_urls": ["/in/1.png"]}, "image_urls[0]"),
    ("image url loopback", {"image_urls": ["https://127.0.0.1/1.png"]}, "image_urls[0]"),
    ("image url localhost", {"image_urls": ["https://localhost/1.png"]}, "image_urls[0]"),
    ("image url private", {"image_urls": ["https://192.168.1.4/1.png"]}, "image_urls[0]"),
    ("image url link-local", {"image_urls": ["https://169.254.169.254/x"]}, "image_urls[0]"),
    (
        "image url with credentials",
        {"image_urls": ["https://u:p@a.example/1.png"]},
        "image_urls[0]",
    ),
    ("image url too long", {"image_urls": ["https://a.example/" + "x" * 2048]}, "image_urls[0]"),
    ("n zero", {"n": 0}, "n"),
    ("n seven", {"n": 7}, "n"),
    ("n not an integer", {"n": 1.5}, "n"),
    ("n a boolean", {"n": True}, "n"),
    ("n a string", {"n": "2"}, "n"),
    ("size bad format", {"size": "1024*1024"}, "size"),
    ("size uppercase X", {"size": "1024X1024"}, "size"),
    ("size side too small", {"size": "511x1024"}, "size"),
    ("size side too large", {"size": "1024x2049"}, "size"),
    ("size with n > 1", {"size": "1024x1024", "n": 2}, "size"),
    ("negative_prompt too long", {"negative_prompt": "x" * 501}, "negative_prompt"),
    ("seed negative", {"seed": -1}, "seed"),
    ("seed too large", {"seed": 2147483648}, "seed"),
    ("prompt_extend not a boolean", {"prompt_extend": "yes"}, "prompt_extend"),
    ("watermark not a boolean", {"watermark": 1}, "watermark"),
    ("metadata not an object", {"metadata": ["a"]}, "metadata"),
    ("metadata value not a string", {"metadata": {"a": 1}}, "metadata.a"),
    ("metadata bad key", {"metadata": {"a b": "c"}}, "metadata"),
    ("metadata too many keys", {"metadata": {f"k{i}": "v" for i in range(21)}}, "metadata"),
    ("metadata value too long", {"metadata": {"k": "v" * 501}}, "metadata"),
    ("unknown field", {"callback_url": "https://evil.example/"}, "callback_url"),
    # NUL is refused by Postgres: it must be a 422, not a failed INSERT.
    ("prompt with NUL", {"prompt": "a\u0000b"}, "prompt"),
    ("negative_prompt with NUL", {"negative_prompt": "a\u0000"}, "negative_prompt"),
    ("metadata key with NUL", {"metadata": {"k\u0000": "v"}}, "metadata"),
    ("metadata value with NUL", {"metadata": {"k": "v\u0000"}}, "metadata"),
    ("image url with NUL", {"image_urls": ["https://a.example/\u0000.png"]}, "image_urls[0]"),
    ("image url host with NUL", {"image_urls": ["https://a.exam\u0000ple/"]}, "image_urls[0]"),
    ("size with NUL", {"size": "1024x1024\u0000"}, "size"),
    # Patterns match whole values: `$` alone would let a final newline through.
    ("size with a final newline", {"size": "1024x1024\n"}, "size"),
    ("metadata key with a final newline", {"metadata": {"k\n": "v"}}, "metadata"),
    ("prompt of zero-width characters", {"prompt": "\u200b\u200c\u200d\ufeff"}, "prompt"),
    ("prompt of format characters", {"prompt": " \u2060\u00ad\u200e\u2066 "}, "prompt"),
    ("prompt of hangul fillers", {"prompt": "\u3164\u115f\uffa0"}, "prompt"),
]

# Each is a loopback, private or special address in a form a resolver reads as such, or a
# URL that readers would split differently: all refused, like their plain forms.
HOSTILE_URLS = [
    "https://127.1/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0177.0.0.1/",
    "https://0/",
    "https://10.1/",
    "https://localhost./",
    "https://127.0.0.1./",
    "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",
    "https://[64:ff9b::7f00:1]/",
    "https://[2002:7f00:1::]/",
    "https://[::ffff:127.0.0.1]/",
    "https://a.example:0/",
    "https://a.example:65536/",
    "https://a.example:abc/",
    "https://a.exa\nmple/x.png",
    "https://a.example/x\r\n.png",
    "https://a.example/\tx.png",
    "\thttps://a.example/x.png",
    "https://a.example\\@localhost/x.png",
    "https://xn--zz.example/x.png",
]


def _body(changes: dict[str, Any]) -> dict[str, Any]:
    body = {**VALID_EDIT, **changes}
    return {key: value for key, value in body.items() if value is not None}


@pytest.mark.parametrize(("case", "changes", "field"), CASES, ids=[c[0] for c in CASES])
async def test_each_limit_is_enforced(
    api: httpx.AsyncClient, case: str, changes: dict[str, Any], field: str
) -> None:
    """A request breaking one limit gets a 422 problem naming that field, and nothing is stored."""
    response = await api.post("/v1/tasks", json=_body(changes))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert field in [error["field"] for error in problem["errors"]], problem
    listing = await api.get("/v1/tasks")
    assert listing.json()["items"] == []


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_hostile_image_urls_are_refused(api: httpx.AsyncClient, url: str) -> None:
    """An image URL is judged as a resolver reads its host; any disguise of a private one is 422."""
    response = await api.post("/v1/tasks", json=_body({"image_urls": [url]}))
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["image_urls[0]"]
    listing = await api.get("/v1/tasks")
    assert listing.json()["items"] == []


# Raw request bodies, as clients write them: `\\udfff` is a JSON escape of a lone surrogate,
# and b"\\xed\\xbf\\xbf" the same surrogate encoded as bytes; Python's JSON reader turns both
# into a string Postgres cannot store.
SURROGATE_BODIES = {
    "prompt": (b'"prompt": "a\\udfffb", "image_urls": ["https://a.example/1.png"]', "prompt"),
    "prompt as bytes": (
        b'"prompt": "a\xed\xbf\xbfb", "image_urls": ["https://a.example/"]',
        "prompt",
    ),
    "negative_prompt": (
        b'"prompt": "p", "negative_prompt": "\\ud800", "image_urls": ["https://a.example/"]',
        "negative_prompt",
    ),
    "metadata value": (
        b'"prompt": "p", "image_urls": ["https://a.example/"], "metadata": {"k": "\\udfff"}',
        "metadata",
    ),
    "metadata value as bytes": (
        b'"prompt": "p", "image_urls": ["https://a.example/"], "metadata": {"k": "\xed\xbf\xbf"}',
        "metadata",
    ),
    "metadata key": (
        b'"prompt": "p", "image_urls": ["https://a.example/"], "metadata": {"\\udfff": "v"}',
        "metadata",
    ),
    "metadata key with a bad value": (
        b'"prompt": "p", "image_urls": ["https://a.example/"], "metadata": {"\\udfff": 1}',
        "metadata",
    ),
    "image url": (
        b'"prompt": "p", "image_urls": ["https://a.example/\\udfff.png"]',
        "image_urls[0]",
    ),
    "size": (
        b'"prompt": "p", "image_urls": ["https://a.example/"], "size": "1024x1024\\udfff"',
        "size",
    ),
}


@pytest.mark.parametrize(("body", "field"), SURROGATE_BODIES.values(), ids=SURROGATE_BODIES.keys())
async def test_lone_surrogates_are_refused_naming_the_field(
    api: httpx.AsyncClient, body: bytes, field: str
) -> None:
    """A lone surrogate is a 422 naming only its field, in well-formed UTF-8, never a 500."""
    response = await api.post(
        "/v1/tasks", content=b"{" + body + b"}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    problem = json.loads(response.content.decode("utf-8"))
    assert [error["field"] for error in problem["errors"]] == [field]
    listing = await api.get("/v1/tasks")
    assert listing.json()["items"] == []


async def raw_post(base_url: str, key: str, headers: list[bytes], body: bytes) -> bytes:
    """The status line of a POST /v1/tasks written byte for byte, as no client library would."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [
            b"POST /v1/tasks HTTP/1.1",
            b"Host: " + parts.netloc.encode(),
            b"Authorization: Bearer " + key.encode(),
            b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode(),
            b"Connection: close",
            *headers,
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


@pytest.mark.parametrize("key", [b"a\x00b", b"\x00"], ids=["inside", "alone"])
async def test_an_idempotency_key_with_nul_is_refused(
    api: httpx.AsyncClient, caller: Caller, key: bytes
) -> None:
    """A NUL in the Idempotency-Key never reaches Postgres: the request is refused whole."""
    status_line = await raw_post(
        str(api.base_url),
        caller.key,
        [b"Idempotency-Key: " + key],
        json.dumps(VALID_EDIT).encode(),
    )
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line
    listing = await api.get("/v1/tasks")
    assert listing.json()["items"] == []


async def test_every_problem_is_listed_in_one_answer(api: httpx.AsyncClient) -> None:
    """Several broken limits come back together, one entry per problem."""
    response = await api.post(
        "/v1/tasks",
        json={
            "prompt": "",
            "image_urls": ["ftp://a.example/x.png", "https://10.0.0.1/y.png"],
            "n": 3,
            "size": "1024x1024",
            "seed": -5,
            "negative_prompt": "n" * 600,
        },
    )
    assert response.status_code == 422
    fields = sorted(error["field"] for error in response.json()["errors"])
    assert fields == sorted(
        ["prompt", "image_urls[0]", "image_urls[1]", "size", "seed", "negative_prompt"]
    )


async def test_body_that_is_not_json_is_a_clear_422(api: httpx.AsyncClient) -> None:
    """A body that is not JSON is refused with a problem document, not a crash."""
    response = await api.post(
        "/v1/tasks", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 6},
        {"size": "512x2048", "n": 1},
        {"seed": 0},
        {"seed": 2147483647},
        {"n": 2.0, "seed": 7.0},
        {"negative_prompt": "x" * 500, "prompt": "p" * 2000},
        {"image_urls": ["https://a.example/1.png", "https://b.example/2.jpg", "https://8.8.8.8/3"]},
        {"metadata": {"order_id": "A-1", "team.name": "imaging"}},
        {"prompt": "\u00e9dit \u200b the sky", "metadata": {"note": "line\nbreak \u00e9"}},
        {
            "image_urls": [
                "https://B\u00fccher.example/in.png",
                "https://[2606:4700::1111]:8443/x.png",
                "https://cdn.example.com./a%20b.png?x=1#frag",
            ]
        },
    ],
)
async def test_values_at_the_limits_are_accepted(
    api: httpx.AsyncClient, changes: dict[str, Any]
) -> None:
    """Values exactly at each documented bound are valid."""
    response = await api.post("/v1/tasks", json=_body(changes))
    assert response.status_code == 202, response.text
