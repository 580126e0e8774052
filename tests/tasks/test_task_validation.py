"""Every documented limit on POST /v1/tasks, checked before anything is stored or sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import VALID_EDIT

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
        {"negative_prompt": "x" * 500, "prompt": "p" * 2000},
        {"image_urls": ["https://a.example/1.png", "https://b.example/2.jpg", "https://8.8.8.8/3"]},
        {"metadata": {"order_id": "A-1", "team.name": "imaging"}},
    ],
)
async def test_values_at_the_limits_are_accepted(
    api: httpx.AsyncClient, changes: dict[str, Any]
) -> None:
    """Values exactly at each documented bound are valid."""
    response = await api.post("/v1/tasks", json=_body(changes))
    assert response.status_code == 202, response.text
